"""Reading live autograd nodes into plain data: op names, output metadata, module tags,
saved tensors. Every attribute of a torch ``Node`` the library reads is read here.

Example:
    >>> import torch
    >>> w = torch.ones(2, requires_grad=True)
    >>> op_name((w * 2).grad_fn), forward_name("SigmoidBackward0")
    ('MulBackward0', 'sigmoid')
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import torch

from graphviz_autograd.graph.model import NodeKind, SavedTensor, TensorMeta
from graphviz_autograd.live import tags

_OP_NAMES: dict[type, str] = {}     # node.name() builds a string per call (bench_trace.py transformer)
_DTYPE_NAMES: dict[Any, str] = {}
_SAVED_ATTRS: dict[type, tuple[str, ...]] = {}     # dir() of a class once (bench_trace.py)
# Interned metadata: the same few shapes recur all over a graph (bench_trace.py: resnet18, lstm1000).
_META: dict[tuple, TensorMeta] = {}
RAGGED = -1   # a dimension that varies inside a nested tensor (or cannot be read) is shown as -1


# Nodes whose backward runs ops (and may use parameters) the graph cannot show.
OPAQUE_OPS = {
    "CompiledFunctionBackward": "a torch.compile region: its ops run fused in this one node",
    "CheckpointFunctionBackward": "a reentrant checkpoint (use_reentrant=True): its ops and "
                                  "parameters are recomputed in backward and not in this graph",
}


def op_name(node) -> str:
    """``"AddmmBackward0"``: the node's name without namespace (cached per node class)."""
    cls = type(node)
    name = _OP_NAMES.get(cls)
    if name is None:
        name = node.name().rpartition("::")[2]
        if cls.__name__ == name:        # a generic wrapper type may stand for several ops
            _OP_NAMES[cls] = name
    return name


def is_accumulate(node) -> bool:
    return hasattr(node, "variable")


def forward_name(node_name: str) -> str:
    """``"SigmoidBackward0"`` -> ``"sigmoid"``: the forward op a backward node belongs to."""
    base = re.sub(r"Backward\d*$", "", node_name.rsplit("::", 1)[-1])
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", base).lower() if base else node_name


def _dtype_name(dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).replace("torch.", "")
    return name


def meta_of(shape, dtype, device) -> TensorMeta:
    """Interned :class:`TensorMeta` of a shape, dtype and device."""
    try:
        key = (tuple(shape), dtype, device)
        meta = _META.get(key)
    except TypeError:            # symbolic shapes are not hashable
        meta, key = None, None
    if meta is None:
        meta = TensorMeta(tuple(map(_dim, shape)), _dtype_name(dtype), str(device))
        if key is not None and len(_META) < 100_000:
            _META[key] = meta
    return meta


def _dim(d) -> int:
    try:
        return int(d)
    except Exception:  # noqa: BLE001 - a jagged nested tensor's ragged size is a symbol ("j1")
        return RAGGED


def tensor_meta(t: torch.Tensor) -> TensorMeta:
    """:func:`meta_of` a tensor; a nested tensor's ragged dimensions are :data:`RAGGED`.

    Example:
        >>> nt = torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(4, 3)])
        >>> tensor_meta(nt).shape
        (2, -1, 3)
    """
    try:
        shape = t.shape
    except RuntimeError:        # a strided nested tensor has no single shape
        shape = _nested_shape(t)
    return meta_of(shape, t.dtype, t.device)


def _nested_shape(t: torch.Tensor) -> tuple[int, ...]:
    try:
        sizes = t._nested_tensor_size().tolist()      # one row of sizes per component
        return (len(sizes), *(col[0] if len(set(col)) == 1 else RAGGED for col in zip(*sizes)))
    except Exception:  # noqa: BLE001 - some other tensor without sizes: its rank at least
        return (RAGGED,) * max(t.dim(), 1)


def _input_meta(m) -> TensorMeta:
    """Metadata of one entry of a node's ``_input_metadata`` (a C++ nested tensor's shape
    cannot be read from it: one :data:`RAGGED` dimension stands for it)."""
    try:
        shape = m.shape
    except RuntimeError:
        shape = (RAGGED,)
    return meta_of(shape, m.dtype, m.device)


# -- every node of a walk, as columns -------------------------------------------------
class NodeColumns(NamedTuple):
    """What :func:`read_nodes` read, one entry per node (same indexing as the walk)."""

    kinds: list
    ops: list[str]
    outputs: list[tuple]
    seqs: list[int]
    params: list[str]
    modules: list[str]
    sources: list[str]
    saved: list[tuple]
    attrs: list[tuple]
    tagged: list[bool]


def read_nodes(fns: list, param_names: dict[int, str], saved: bool) -> NodeColumns:
    """Plain data of every node in ``fns`` (the loop is inlined: it runs once per node of
    every trace; bench_trace.py)."""
    n = len(fns)
    kinds: list = []
    ops: list[str] = []
    outputs: list[tuple] = []
    seqs: list[int] = []
    params: list[str] = []
    modules: list[str] = [""] * n
    sources: list[str] = [""] * n
    saved_out: list[tuple] = [()] * n
    attrs: list[tuple] = [()] * n
    tagged = [False] * n
    read_tags = tags.tagging_ever()
    module_key, call_key, saved_key = tags.MODULE_KEY, tags.CALL_KEY, tags.SAVED_KEY
    storages: dict[int, int] = {}
    sizes: dict[int, int] = {}      # storage address -> bytes, within this walk
    OP, cache = NodeKind.OP, _META
    for i, fn in enumerate(fns):
        outs = []
        try:
            for m in fn._input_metadata:
                shape, dtype, device = m.shape, m.dtype, m.device
                meta = cache.get((tuple(shape), dtype, device))
                outs.append(meta if meta is not None else meta_of(shape, dtype, device))
        except (RuntimeError, TypeError):   # nested tensors: no plain shape (see tensor_meta)
            outs = [_input_meta(m) for m in fn._input_metadata]
        outputs.append(tuple(outs))
        cls = type(fn)
        op = _OP_NAMES.get(cls) or op_name(fn)
        if op == "AccumulateGrad":
            pname = param_names.get(id(fn.variable), "")
            kinds.append(NodeKind.PARAM if pname else NodeKind.LEAF)
            ops.append("AccumulateGrad")
            params.append(pname)
            seqs.append(-1)
            continue
        kinds.append(OP)
        ops.append(op)
        params.append("")
        seqs.append(fn._sequence_nr())
        call = raw = None
        if read_tags:
            meta = fn.metadata
            if meta:
                tag = meta.get(module_key)
                if tag is not None:
                    modules[i], sources[i] = tag
                    tagged[i] = True
                    call = meta.get(call_key)
                raw = meta.get(saved_key)
        if saved:
            saved_out[i], attrs[i] = _saved_of(fn, raw, storages, sizes)
        if call:
            attrs[i] += (("call", str(call)),)
        if op in OPAQUE_OPS:
            attrs[i] += _opaque_attrs(fn, op, param_names)
    return NodeColumns(kinds, ops, outputs, seqs, params, modules, sources, saved_out, attrs, tagged)


def _opaque_attrs(fn, op: str, param_names: dict[int, str]) -> tuple:
    """``hides`` (why) and, for a checkpoint of a module, ``hidden_params`` (its parameters)."""
    out: tuple = (("hides", OPAQUE_OPS[op]),)
    run = getattr(fn, "run_function", None)         # torch.utils.checkpoint keeps the function
    module = run if isinstance(run, torch.nn.Module) else getattr(run, "__self__", None)
    if isinstance(module, torch.nn.Module):
        names = [param_names[id(p)] for p in module.parameters() if id(p) in param_names]
        if names:
            out += (("hidden_params", ", ".join(names)),)
    return out


def _saved_of(fn, raw, storages: dict[int, int], sizes: dict[int, int]):
    if raw is None:
        raw = raw_saved(fn, sizes)
    tensors, attrs = raw
    out = []
    for name, meta, nbytes, ptr, freed in tensors:
        if freed:
            out.append(SavedTensor(name=name, freed=True))
            continue
        key = storages.setdefault(ptr, len(storages))
        out.append(SavedTensor(name=name, meta=meta, nbytes=nbytes, storage=f"s{key}"))
    return tuple(out), attrs


# -- saved tensors ------------------------------------------------------------------
def saved_attrs(fn) -> tuple[str, ...]:
    """The ``_saved_*`` attribute names of a node's class (cached per class)."""
    cls = type(fn)
    names = _SAVED_ATTRS.get(cls)
    if names is None:
        names = tuple(a for a in dir(cls) if a.startswith("_saved_")
                      and not a.endswith(("_sym_sizes", "_sym_strides")))
        _SAVED_ATTRS[cls] = names
    return names


def raw_saved(fn, sizes: dict[int, int] | None = None):
    """Saved tensors of ``fn`` as plain tuples ``(name, meta, nbytes, storage_ptr, freed)``
    plus non-tensor saved values as ``(name, text)`` attrs. Holds no tensor.

    ``sizes`` caches storage sizes by address within one walk (see :func:`_saved_tensor`).
    """
    tensors: list[tuple] = []
    attrs: list[tuple[str, str]] = []
    names = saved_attrs(fn)
    if not names and _has_saved_tensors(fn):   # custom autograd.Function, backward hooks
        names = ("saved_tensors",)
    for attr in names:
        name = attr[len("_saved_"):] if attr.startswith("_saved_") else attr
        try:
            value = getattr(fn, attr)
        except RuntimeError:         # buffers freed by backward()
            tensors.append((name, None, 0, 0, True))
            continue
        except Exception:            # noqa: BLE001 - odd saved kinds: skip, never fail a trace
            continue
        if isinstance(value, torch.Tensor):
            tensors.append(_saved_tensor(name, value, sizes))
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
            tensors.extend(_saved_tensor(f"{name}[{k}]", v, sizes)
                           for k, v in enumerate(value) if isinstance(v, torch.Tensor))
        elif value is not None and isinstance(value, (int, float, bool, str, tuple, list)):
            attrs.append((name, str(value)))
    return tuple(tensors), tuple(attrs)


def _has_saved_tensors(fn) -> bool:
    try:
        return hasattr(fn, "saved_tensors")
    except RuntimeError:    # freed by backward() (e.g. a full backward hook's node): still saved
        return True


def _saved_tensor(name: str, t: torch.Tensor, sizes: dict[int, int] | None = None) -> tuple:
    """``sizes``: storage address -> size, of storages already seen in this walk (whose
    tensors are all alive, so an address names one storage); skips building a storage
    object when the same storage is saved again (bench_trace.py lstm1000: an RNN saves
    its weight at every step)."""
    meta = tensor_meta(t)
    try:
        ptr = t.data_ptr() - t.storage_offset() * t.element_size()
        nbytes = sizes.get(ptr) if sizes is not None else None
        if nbytes is None:
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if sizes is not None:
                sizes[ptr] = nbytes
    except (RuntimeError, NotImplementedError, TypeError):   # sparse, meta, ...
        ptr, nbytes = id(t), t.numel() * t.element_size()
    return (name, meta, int(nbytes), ptr or id(t), False)


def stale_saved(nodes) -> tuple[object, str] | None:
    """The first node whose saved tensor was modified in place, with the attribute name."""
    for node in nodes:
        for attr in saved_attrs(node):
            try:
                getattr(node, attr)
            except RuntimeError as exc:
                if "modified by an inplace operation" in str(exc):
                    return node, attr[len("_saved_"):]
            except Exception:  # noqa: BLE001 - odd saved kinds are not what we look for
                continue
    return None


class Reach:
    """Which of some target parameters a live node can reach (memoised, iterative)."""

    def __init__(self, targets: set[int]):
        self.targets = targets
        self.memo: dict[int, frozenset[int]] = {}
        self._keep: list = []         # keep walked nodes alive so ids stay unique

    def __call__(self, node) -> frozenset[int]:
        if node is None:
            return frozenset()
        if id(node) in self.memo:
            return self.memo[id(node)]
        todo = [(node, False)]
        while todo:
            n, expanded = todo.pop()
            if id(n) in self.memo:
                continue
            kids = [k for k, _ in n.next_functions if k is not None]
            if not expanded:
                todo.append((n, True))
                todo.extend((k, False) for k in kids if id(k) not in self.memo)
                continue
            found: set[int] = set()
            if is_accumulate(n) and id(n.variable) in self.targets:
                found.add(id(n.variable))
            for k in kids:
                found |= self.memo.get(id(k), frozenset())
            self.memo[id(n)] = frozenset(found)
            self._keep.append(n)
        return self.memo[id(node)]
