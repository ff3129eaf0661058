"""Recorders that watch one forward and one backward pass for :func:`diagnose`.

* :class:`ForwardWatch` is a ``TorchFunctionMode``: it sees every torch call
  the user's code makes (``F.linear``, ``x.detach()``, ``x.data``, ``relu_``)
  with its operands and result, and records gradient cuts, in-place writes,
  the first non-finite result, activation statistics and a failing op.
* :class:`ModuleOutputs` keeps what each module returned (the module tracker of
  ``live/`` records which modules ran, in which order).
* :class:`~.backward.BackwardWatch` (in ``backward.py``) watches the backward pass.

Each recorder owns its hook handles and removes them in ``remove()``; the
caller calls it in ``finally``. Recording never raises into the user's forward.

Example:
    >>> import torch
    >>> w = torch.ones(3, requires_grad=True)
    >>> with ForwardWatch({id(w): "w"}) as watch:
    ...     y = (w * 2).detach()
    >>> [(c.op, c.reason) for c in watch.cuts]
    [('detach', 'detach')]
"""
from __future__ import annotations

import collections
import weakref
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

from graphviz_autograd.live.frames import IGNORED_SOURCE
from graphviz_autograd.live.frames import user_line as where
from graphviz_autograd.live.tags import node_tag

_PY_EXITS = {"item", "tolist", "numpy", "__float__", "__int__", "__index__"}
_ACTIVATIONS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
                "tanh": "tanh", "tanh_": "tanh"}
_VIEWS = {"flatten", "view", "reshape", "contiguous"}
_RESHAPES = {"flatten", "view", "reshape"}
_LINEAR = {"linear", "matmul", "mm", "addmm"}
MAX_CUTS = 500
MAX_MIXES = 8


def tag(node) -> tuple[str, str]:
    """``(module, source)`` instrumentation stored on ``node``, without the diagnose call site."""
    module, source = (node_tag(node) or ("", "")) if node is not None else ("", "")
    return module, ("" if source == IGNORED_SOURCE.get() else source)


def func_name(func) -> str:
    name = getattr(func, "__name__", "") or str(func)
    if name in ("__get__", "__set__"):
        owner = getattr(getattr(func, "__self__", None), "__name__", "")
        return f".{owner}" if owner else name
    return name


def _tensors(values) -> list[torch.Tensor]:
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(x for x in v if isinstance(x, torch.Tensor))
    return out


def finite(t: torch.Tensor) -> bool:
    """True when ``t`` has no NaN/Inf (a cheap sum first; the full check only if it overflows)."""
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


def _product(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@dataclass
class Cut:
    """An op that got inputs requiring grad and returned something without grad."""

    order: int
    op: str
    reason: str            # detach | data | no_grad | inference_mode | integer | python | other
    source: str
    module: str
    inputs: list = field(default_factory=list)      # live nodes of the grad-carrying inputs
    leaf_ids: set = field(default_factory=set)      # id() of leaf tensors among them
    tensors: list = field(default_factory=list)     # the grad-carrying input tensors
    dtype: str = ""


@dataclass
class InplaceWrite:
    order: int
    op: str
    source: str
    module: str
    shape: tuple[int, ...]
    version_before: int
    version_after: int
    producer: object        # grad_fn before the write (None for a leaf)
    node: object            # grad_fn after the write (the in-place node)
    is_view: bool


@dataclass
class NonFiniteOp:
    order: int
    op: str
    source: str
    module: str
    node: object
    shape: tuple[int, ...]
    nan: int
    posinf: int
    neginf: int
    numel: int
    operands: list          # (label, shape, finite, zeros, negatives, min, max)
    input_nodes: list


@dataclass
class Activation:
    kind: str                # relu | sigmoid | tanh
    op: str
    source: str
    module: str
    node: object = None
    calls: int = 0
    units: int = 0
    samples: int = 0         # values seen per unit, over all calls
    mask: torch.Tensor | None = None   # per unit: dead/saturated in every call so far


@dataclass
class BatchMix:
    """A view/reshape/flatten whose rows cut across the examples of the batch."""

    order: int
    op: str
    source: str
    module: str
    before: tuple[int, ...]
    after: tuple[int, ...]
    batch: int
    node: object                        # grad_fn of the result (None without grad)
    result: object = None               # weakref to the result, to see who consumes it
    consumer: str = ""                  # module of the first linear layer fed by the result
    consumer_weight: tuple[int, ...] = ()


@dataclass
class OpFailure:
    op: str
    source: str
    module: str
    message: str
    operands: list           # (label, shape)
    tensors: list            # operand tensors (strong refs; for the partial graph)
    order: int = 0


class ForwardWatch(TorchFunctionMode):
    """Records what diagnose needs from the forward pass (see the module docstring).

    Args:
        param_names: ``{id(parameter): qualified name}``.
        modules: returns the current module path ("" outside modules).
        check_values: also check results for NaN/Inf and collect activation stats.
    """

    def __init__(self, param_names: dict[int, str], modules=None, check_values: bool = True,
                 batch: int | None = None, in_model=None):
        super().__init__()
        self.param_names = param_names
        self.current_module = modules or (lambda: "")
        self.check_values = check_values
        self.batch = batch                 # examples in the model input (None: not known yet)
        self.in_model = in_model           # () -> whether the model's forward is running
        self.mixes: list[BatchMix] = []
        self.order = 0
        self.cuts: list[Cut] = []
        self.writes: list[InplaceWrite] = []
        self.nonfinite: list[NonFiniteOp] = []
        self.activations: dict[tuple[str, str, str], Activation] = {}
        self.failure: OpFailure | None = None
        self.views: collections.deque = collections.deque(maxlen=16)
        self.op_names: dict[int, str] = {}         # sequence_nr -> forward function name
        self.recent: collections.deque = collections.deque(maxlen=4)
        self.problems: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = _tensors(args) + _tensors(kwargs.values())
        try:
            versions = [t._version for t in inputs]
        except RuntimeError:        # inference tensors have no version counter
            versions = [None] * len(inputs)
        before = ([t.grad_fn for t in inputs] if _maybe_inplace(func_name(func), kwargs)
                  else None)
        try:
            out = func(*args, **kwargs)
        except Exception as exc:
            if self.failure is None:
                self._record_failure(func, inputs, exc)
            raise
        self.order += 1
        mode = ("inference_mode" if torch.is_inference_mode_enabled()
                else "" if torch.is_grad_enabled() else "no_grad")
        try:
            with torch.no_grad():
                self._after(func, inputs, versions, before, out, kwargs, mode)
        except Exception as exc:  # noqa: BLE001 - recording must never break the user's forward
            if len(self.problems) < 5:
                self.problems.append(f"{func_name(func)}: {type(exc).__name__}: {exc}")
        return out

    # -- recording ---------------------------------------------------------------
    def _after(self, func, inputs, versions, before, out, kwargs, mode) -> None:
        name = func_name(func)
        outs = _tensors([out]) if not isinstance(out, dict) else _tensors(out.values())
        for t in outs:
            if t.grad_fn is not None:
                self.op_names.setdefault(t.grad_fn._sequence_nr(), name)
                self.recent.append(t)
        grad_in = [t for t in inputs if t.requires_grad]
        for i, (t, v) in enumerate(zip(inputs, versions)):
            if v is not None and t.requires_grad and t._version != v:
                self._record_write(name, t, v, kwargs, before[i] if before else _prev_fn(t))
        if grad_in and len(self.cuts) < MAX_CUTS and not any(t.requires_grad for t in outs):
            if outs or name in _PY_EXITS:
                self._record_cut(name, grad_in, outs, mode)
        if self.batch is None and inputs and self.in_model is not None and self.in_model():
            self._guess_batch(inputs)
        if name in _VIEWS and outs and inputs:
            self.views.append((weakref.ref(outs[0]), name, _shape(inputs[0]), _shape(outs[0]), where()))
            if name in _RESHAPES and len(self.mixes) < MAX_MIXES:
                self._check_batch(name, inputs[0], outs[0])
        elif self.mixes and name in _LINEAR and len(inputs) >= 2:
            self._note_consumer(inputs)
        if not self.check_values:
            return
        kind = _ACTIVATIONS.get(name)
        if kind and outs and outs[0].is_floating_point():
            self._record_activation(kind, name, outs[0])
        if len(self.nonfinite) < 3 and not name.startswith("."):     # not attribute reads (.grad)
            for t in outs:
                if t.is_floating_point() and t.numel() and not finite(t):
                    self._record_nonfinite(name, inputs, t)
                    break

    def _record_cut(self, name, grad_in, outs, mode) -> None:
        if name == ".data":
            reason = "data"
        elif name == "detach":
            reason = "detach"
        elif mode:
            reason = mode
        elif not outs:
            reason = "python"
        elif not (outs[0].is_floating_point() or outs[0].is_complex()):
            reason = "integer"
        else:
            reason = "other"
        nodes = [t.grad_fn for t in grad_in if t.grad_fn is not None]
        leaves = {id(t) for t in grad_in if t.grad_fn is None}
        self.cuts.append(Cut(self.order, name, reason, where(), self.current_module(), nodes,
                             leaves, list(grad_in), str(outs[0].dtype).replace("torch.", "") if outs else ""))

    def _guess_batch(self, inputs) -> None:
        """The batch size is the leading size of the first non-parameter operand the model's
        forward uses (when diagnose was not given the inputs)."""
        for t in inputs:
            if self.param_names.get(id(t), "inputs[").startswith("inputs["):
                self.batch = int(t.shape[0]) if t.dim() >= 2 else 0
                return

    def _check_batch(self, name, x, y) -> None:
        """Record ``x -> y`` when ``x`` holds the batch and the rows of ``y`` cut across examples.

        Rows that stay inside one example (``(B, T, V) -> (B*T, V)``) are fine; a ``-1`` that
        absorbed part of the batch (``(100, 16, 4, 4) -> (64, 400)``) mixes examples.
        """
        n = self.batch
        if not n or n < 2 or x.dim() < 2 or y.dim() < 2 or x.shape[0] != n or y.shape[0] == n:
            return
        per_example, per_row = _product(x.shape[1:]), _product(y.shape[1:])
        if per_row and per_example % per_row == 0:
            return
        self.mixes.append(BatchMix(self.order, name, where(), self.current_module(), _shape(x),
                                   _shape(y), n, y.grad_fn, weakref.ref(y)))

    def _note_consumer(self, inputs) -> None:
        for mix in self.mixes:
            if not mix.consumer and mix.result is not None and mix.result() is inputs[0]:
                mix.consumer = self.current_module() or self.param_names.get(id(inputs[1]), "")
                mix.consumer_weight = _shape(inputs[1])

    def _record_write(self, name, t, version, kwargs, producer) -> None:
        op = f"{name}(inplace=True)" if kwargs.get("inplace") and not name.endswith("_") else name
        self.writes.append(InplaceWrite(self.order, op, where(), self.current_module(), _shape(t),
                                        version, t._version, producer, t.grad_fn,
                                        t._base is not None))

    def _record_activation(self, kind, name, y) -> None:
        key = (self.current_module(), where(), kind)
        act = self.activations.get(key)
        if act is None:
            act = self.activations[key] = Activation(kind, name, key[1], key[0])
        act.calls += 1
        act.node = y.grad_fn
        if y.dim() == 0:
            return
        unit_dim = y.dim() - 1 if y.dim() == 3 else (1 if y.dim() >= 2 else 0)
        per_unit = y.detach().transpose(0, unit_dim).reshape(y.shape[unit_dim], -1)
        if kind == "relu":
            mask = ~(per_unit > 0).any(dim=1)
        elif kind == "sigmoid":
            mask = ((per_unit < 1e-3) | (per_unit > 1 - 1e-3)).all(dim=1)
        else:
            mask = (per_unit.abs() > 1 - 1e-3).all(dim=1)
        if act.mask is not None and act.mask.shape == mask.shape:
            mask = mask & act.mask
            act.samples += int(per_unit.shape[1])
        else:
            act.samples = int(per_unit.shape[1])
        act.mask, act.units = mask, int(mask.numel())

    def _record_nonfinite(self, name, inputs, t) -> None:
        operands = []
        for i, x in enumerate(inputs):
            if not x.is_floating_point() or not x.numel():
                continue
            label = self.param_names.get(id(x), f"operand {i}")
            xf = x.detach()
            operands.append((label, _shape(x), finite(xf), int((xf == 0).sum()), int((xf < 0).sum()),
                             float(xf.min()), float(xf.max())))
        self.nonfinite.append(NonFiniteOp(
            self.order, name, where(), self.current_module(), t.grad_fn, _shape(t),
            int(torch.isnan(t).sum()), int((t == float("inf")).sum()),
            int((t == float("-inf")).sum()), t.numel(), operands,
            [x.grad_fn for x in inputs if x.grad_fn is not None]))

    def _record_failure(self, func, inputs, exc) -> None:
        operands = [(self.param_names.get(id(t), f"operand {i}"), _shape(t)) for i, t in enumerate(inputs)]
        self.failure = OpFailure(func_name(func), where(), self.current_module(),
                                 str(exc), operands, list(inputs), order=self.order)

    def view_origin(self, t: torch.Tensor):
        """``(op, shape before, shape after, source)`` if ``t`` came out of a recent reshape."""
        for ref, op, before, after, src in reversed(self.views):
            if ref() is t:
                return op, before, after, src
        return None


def _maybe_inplace(name: str, kwargs) -> bool:
    return (name.endswith("_") and not name.endswith("__")) or name.startswith("__i") \
        or name == "__setitem__" or bool(kwargs.get("inplace")) or "out" in kwargs


def _prev_fn(t: torch.Tensor):
    """The node that produced ``t`` before an in-place op replaced its ``grad_fn``."""
    fn = t.grad_fn
    if fn is None:
        return None
    nxt = [n for n, _ in fn.next_functions if n is not None]
    return nxt[0] if nxt else None


class ModuleOutputs:
    """``on_output`` callback of the forward's module tracker: keeps up to four float
    output tensors per module (to find which module's output never reached the loss)."""

    def __init__(self):
        self.outputs: dict[str, list] = {}

    def __call__(self, name: str, _module, out) -> None:
        outs = self.outputs.setdefault(name, [])
        if len(outs) < 4:
            outs.extend(t for t in _tensors([out] if not isinstance(out, dict) else out.values())
                        if t.is_floating_point())
