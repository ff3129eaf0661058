"""Walk a live autograd graph into a plain :class:`~graphviz_autograd.model.Graph`.

Example:
    >>> import torch, graphviz_autograd as ga
    >>> net = torch.nn.Linear(4, 2)
    >>> loss = net(torch.randn(3, 4)).pow(2).mean()
    >>> g = ga.trace(loss, model=net)
    >>> sorted(g.params)
    ['bias', 'weight']
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from . import _gc, _stack, ids
from . import instrumentation as _instrument
from .errors import NotDifferentiableError, TraceInputError, describe
from .model import Edge, Graph, Node, NodeKind, SavedTensor, TensorMeta

_DTYPE_NAMES: dict[Any, str] = {}
_SAVED_ATTRS: dict[type, tuple[str, ...]] = {}
_OP_NAMES: dict[type, str] = {}


def trace(outputs, *, model: torch.nn.Module | None = None, saved: bool = True,
          show_saved: bool = False, _visit=None) -> Graph:
    """Trace the autograd graph behind ``outputs`` into a :class:`Graph`.

    Args:
        outputs: a tensor, or a (nested) tuple/list/dict/dataclass of tensors.
            Entries that are not tensors or do not require grad are skipped;
            at least one must have an autograd graph.
        model: the module whose parameters name the parameter nodes
            (``param:conv1.weight``) and whose structure names op modules.
        saved: collect metadata (shape, dtype, bytes) of tensors saved for
            backward. Cheap; turn off for the fastest structural walk.
        show_saved: add one ``saved`` node per saved storage, linked to the
            ops that saved it.

    Returns:
        A frozen :class:`Graph` holding plain data only: no tensor, node or
        module reference survives this call.

    Raises:
        NotDifferentiableError: no entry of ``outputs`` has a graph.
        TraceInputError: ``outputs`` holds nothing tensor-like.
    """
    roots = _flatten_roots(outputs)
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TraceInputError(f"model= must be an nn.Module, got {describe(model)}; "
                              "pass the network whose parameters you want named")
    param_names = {}
    if model is not None:
        param_names = {id(p): name for name, p in model.named_parameters()}
    with _gc.paused():
        return _Walker(param_names, saved or show_saved, show_saved, _visit).run(roots)


# -- inputs --------------------------------------------------------------------
def _flatten_roots(outputs) -> list[tuple[str, torch.Tensor]]:
    found: list[tuple[str, Any]] = []
    stack: list[tuple[str, Any]] = [("", outputs)]
    while stack:
        path, value = stack.pop()
        children = _children(value)
        if children is None:
            found.append((path or "0", value))
        else:
            stack.extend(reversed([(f"{path}.{k}" if path else str(k), v) for k, v in children]))
    tensors = [(p, v) for p, v in found if isinstance(v, torch.Tensor)]
    if not tensors:
        raise TraceInputError(
            f"trace() found no tensor in {describe(outputs)}; pass the loss or the model's "
            "output (a tensor, or a tuple/list/dict of tensors)")
    diff = [(p, t) for p, t in tensors if t.requires_grad]
    if not diff:
        path, t = tensors[0]
        where = "" if path == "0" else f" (at {path!r})"
        raise NotDifferentiableError(
            f"{describe(t)}{where} has no autograd graph, so there is nothing to trace. "
            "Did you compute it under torch.no_grad() or torch.inference_mode(), call "
            ".detach() or .item(), or use inputs/parameters with requires_grad=False? "
            "Compute it with grad enabled from parameters that require grad.")
    return diff


def _children(value):
    if isinstance(value, torch.Tensor):
        return None
    if isinstance(value, Mapping):
        return list(value.items())
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return list(value._asdict().items())
    if isinstance(value, (list, tuple)):
        return list(enumerate(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    return None


# -- the walk ------------------------------------------------------------------
def _dtype_name(dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).replace("torch.", "")
    return name


_META: dict[tuple, TensorMeta] = {}


def _meta_of(shape, dtype, device) -> TensorMeta:
    """Interned :class:`TensorMeta` (the same few shapes recur all over a graph)."""
    try:
        key = (tuple(shape), dtype, device)
        meta = _META.get(key)
    except TypeError:            # symbolic shapes are not hashable
        meta, key = None, None
    if meta is None:
        meta = TensorMeta(tuple(int(d) for d in shape), _dtype_name(dtype), str(device))
        if key is not None and len(_META) < 100_000:
            _META[key] = meta
    return meta


def saved_attrs(fn) -> tuple[str, ...]:
    cls = type(fn)
    attrs = _SAVED_ATTRS.get(cls)
    if attrs is None:
        attrs = tuple(a for a in dir(cls) if a.startswith("_saved_")
                      and not a.endswith(("_sym_sizes", "_sym_strides")))
        _SAVED_ATTRS[cls] = attrs
    return attrs


class _Walker:
    def __init__(self, param_names: dict[int, str], saved: bool, show_saved: bool, visit=None):
        self.visit = visit
        self.param_names = param_names
        self.saved = saved
        self.show_saved = show_saved
        self.storages: dict[int, int] = {}
        self.sizes: dict[int, int] = {}     # storage address -> bytes, within this trace

    def run(self, roots: list[tuple[str, torch.Tensor]]) -> Graph:
        fns: list[Any] = []
        index: dict[Any, int] = {}
        raw_edges: list[tuple[int, int, int, int]] = []   # src, dst, output_nr, input_nr
        root_refs: list[tuple[str, int, int, TensorMeta]] = []
        for name, t in roots:
            fn = t.grad_fn
            if fn is None:
                fn = torch.autograd.graph.get_gradient_edge(t).node
            if fn not in index:
                index[fn] = len(fns)
                fns.append(fn)
            root_refs.append((name, index[fn], t.output_nr if t.grad_fn is not None else 0,
                              _meta_of(t.shape, t.dtype, t.device)))
        # Iterative DFS in next_functions order: deterministic discovery order.
        stack = list(reversed(range(len(fns))))
        visited = [False] * len(fns)
        while stack:
            i = stack.pop()
            if visited[i]:
                continue
            visited[i] = True
            pending = []
            for input_nr, (nxt, output_nr) in enumerate(fns[i].next_functions):
                if nxt is None:
                    continue
                j = index.get(nxt)
                if j is None:
                    j = index[nxt] = len(fns)
                    fns.append(nxt)
                    visited.append(False)
                raw_edges.append((j, i, output_nr, input_nr))
                if not visited[j]:
                    pending.append(j)
            stack.extend(reversed(pending))
        del index, stack
        graph = self._build(fns, raw_edges, root_refs)
        if self.visit is not None:      # internal: the recorder maps live nodes to ids
            for fn, node in zip(fns, graph.nodes):
                self.visit(fn, node.id)
        fns.clear()
        _stack.ensure_release_stack(_longest_path(len(graph.nodes), raw_edges))
        return graph

    def _build(self, fns, raw_edges, root_refs) -> Graph:
        n = len(fns)
        kinds: list[NodeKind] = []
        ops: list[str] = []
        outputs: list[tuple] = []
        seqs: list[int] = []
        params: list[str] = []
        modules: list[str] = [""] * n
        sources: list[str] = [""] * n
        saved: list[tuple] = [()] * n
        attrs: list[tuple] = [()] * n
        read_tags = _instrument.ACTIVE_EVER
        tagged = [False] * n
        saved_on = self.saved
        param_names = self.param_names
        OP = NodeKind.OP
        cache = _META
        for i, fn in enumerate(fns):
            outs = []
            for m in fn._input_metadata:
                shape, dtype, device = m.shape, m.dtype, m.device
                meta = cache.get((tuple(shape), dtype, device))
                outs.append(meta if meta is not None else _meta_of(shape, dtype, device))
            outputs.append(tuple(outs))
            cls = type(fn)
            op = _OP_NAMES.get(cls)
            if op is None:
                op = fn.name().rpartition("::")[2]
                if cls.__name__ == op:      # a generic wrapper type may stand for several ops
                    _OP_NAMES[cls] = op
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
            call = None
            if read_tags:
                meta = fn.metadata
                tag = meta.get(_instrument.META_KEY) if meta else None
                if tag is not None:
                    modules[i], sources[i] = tag
                    tagged[i] = True
                    call = meta.get(_instrument.CALL_KEY)
            if saved_on:
                saved[i], attrs[i] = self._saved_of(fn)
            if call:
                attrs[i] += (("call", str(call)),)
        _attribute_modules(kinds, params, modules, seqs, raw_edges, tagged)
        node_ids = self._ids(kinds, ops, params, modules, seqs)
        rank = [-1] * n
        for r, i in enumerate(sorted((i for i in range(n) if seqs[i] >= 0), key=seqs.__getitem__)):
            rank[i] = r
        nodes = list(map(Node, node_ids, kinds, ops, modules, sources, params, outputs, saved,
                         rank, attrs))
        edges = [Edge(node_ids[s], node_ids[d], o, k,
                      outputs[s][o] if o < len(outputs[s]) else None)
                 for s, d, o, k in raw_edges]
        roots = []
        for name, i, output_nr, meta in root_refs:
            oid = ids.output_id(name)
            nodes.append(Node(id=oid, kind=NodeKind.OUTPUT, op="output", param=name,
                              outputs=(meta,)))
            edges.append(Edge(node_ids[i], oid, output_nr, 0, meta))
            roots.append(oid)
        if self.show_saved:
            _add_saved_nodes(nodes, edges)
        return Graph(nodes=tuple(nodes), edges=tuple(edges), roots=tuple(roots))

    def _ids(self, kinds, ops, params, modules, seqs) -> list[str]:
        out = [""] * len(kinds)
        leaf_k = 0
        op_idx = []
        for i, kind in enumerate(kinds):
            if kind is NodeKind.PARAM:
                out[i] = ids.param_id(params[i])
            elif kind is NodeKind.LEAF:
                out[i] = ids.leaf_id(leaf_k)
                leaf_k += 1
            else:
                op_idx.append(i)
        op_seqs = [seqs[i] for i in op_idx]
        order = sorted(range(len(op_idx)), key=op_seqs.__getitem__)   # stable: ties keep walk order
        op_names = ids.op_ids([(modules[i], ops[i]) for i in op_idx], order)
        for j, i in enumerate(op_idx):
            out[i] = op_names[j]
        return out

    def _saved_of(self, fn) -> tuple[tuple[SavedTensor, ...], tuple[tuple[str, str], ...]]:
        raw = None
        if _instrument.ACTIVE_EVER:
            meta = fn.metadata
            raw = meta.get(SAVED_KEY) if meta else None
        if raw is None:
            raw = raw_saved(fn, self.sizes)
        tensors, attrs = raw
        out = []
        for name, meta, nbytes, ptr, freed in tensors:
            if freed:
                out.append(SavedTensor(name=name, freed=True))
                continue
            key = self.storages.setdefault(ptr, len(self.storages))
            out.append(SavedTensor(name=name, meta=meta, nbytes=nbytes, storage=f"s{key}"))
        return tuple(out), attrs


SAVED_KEY = "graphviz_autograd.saved"


def raw_saved(fn, sizes: dict[int, int] | None = None):
    """Saved tensors of ``fn`` as plain tuples ``(name, meta, nbytes, storage_ptr, freed)``
    plus non-tensor saved values as ``(name, text)`` attrs. Holds no tensor.

    ``sizes`` caches storage sizes by address within one trace (see :func:`_saved_tensor`).
    """
    tensors: list[tuple] = []
    attrs: list[tuple[str, str]] = []
    names = saved_attrs(fn)
    if not names and hasattr(fn, "saved_tensors"):   # custom autograd.Function
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


def _saved_tensor(name: str, t: torch.Tensor, sizes: dict[int, int] | None = None) -> tuple:
    """``sizes``: storage address -> size, of storages already seen in this trace (whose
    tensors are all alive, so an address names one storage); skips building a storage
    object when the same storage is saved again (a weight at every step of an RNN)."""
    meta = _meta_of(t.shape, t.dtype, t.device)
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


def _attribute_modules(kinds, params, modules, seqs, raw_edges, tagged) -> None:
    """Give ops without an instrumentation tag the module of the parameter they consume.

    A unary chain on one parameter (``t()``, ``view``, ``expand`` of a weight) takes
    that parameter's module; an op consuming parameters (or such chains) of one
    module takes that module. Only the neighbourhood of parameters is visited.
    Nodes tagged by instrumentation keep their tag ("" is the root module).
    """
    PARAM = NodeKind.PARAM
    owner: dict[int, str] = {i: p.rpartition(".")[0] for i, p in enumerate(params)
                             if p and kinds[i] is PARAM}
    if not owner:
        return
    indeg = [0] * len(kinds)
    succ: dict[int, list[int]] = {}
    for s, d, _o, _k in raw_edges:
        indeg[d] += 1
        succ.setdefault(s, []).append(d)
    consumers: dict[int, set[str]] = {}
    frontier = list(owner)
    while frontier:                  # walk forward from parameters along unary chains
        nxt = []
        for s in frontier:
            for d in succ.get(s, ()):
                if indeg[d] == 1 and d not in owner:
                    owner[d] = owner[s]
                    nxt.append(d)
                elif owner[s]:
                    consumers.setdefault(d, set()).add(owner[s])
        frontier = nxt
    for d, mod in owner.items():
        if kinds[d] is not PARAM and not modules[d] and not tagged[d]:
            modules[d] = mod
    for d, mods in consumers.items():
        if len(mods) == 1 and d not in owner and not modules[d] and not tagged[d]:
            modules[d] = next(iter(mods))


def _add_saved_nodes(nodes: list[Node], edges: list[Edge]) -> None:
    by_storage: dict[str, SavedTensor] = {}
    users: dict[str, list[tuple[str, str]]] = {}
    for n in nodes:
        for s in n.saved:
            if s.freed or not s.storage:
                continue
            by_storage.setdefault(s.storage, s)
            users.setdefault(s.storage, []).append((n.id, s.name))
    for storage, s in by_storage.items():
        sid = ids.saved_id(int(storage[1:]))
        nodes.append(Node(id=sid, kind=NodeKind.SAVED, op="saved", param=s.name,
                          outputs=(s.meta,), saved=(s,)))
        for user, _name in users[storage]:
            edges.append(Edge(sid, user, 0, -1, s.meta))


def _longest_path(n: int, raw_edges: list[tuple[int, int, int, int]]) -> int:
    """Length of the longest chain of nodes (iterative topological pass), or ``n`` (an
    upper bound) when the stack ``n`` levels need is small enough to just grant."""
    if n < _stack.SAFE_DEPTH_DEFAULT or _stack.affordable(n):
        return n
    succ: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for s, d, _o, _k in raw_edges:
        succ[d].append(s)            # root -> leaves direction
        indeg[s] += 1
    depth = [1] * n
    ready = [i for i in range(n) if indeg[i] == 0]
    best = 1
    while ready:
        i = ready.pop()
        di = depth[i]
        best = max(best, di)
        for j in succ[i]:
            if depth[j] < di + 1:
                depth[j] = di + 1
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    return best
