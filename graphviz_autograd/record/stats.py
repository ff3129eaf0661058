"""Gradient and activation statistics, computed in as few calls as possible.

Each tensor becomes a *row* of sums (sum of squares, sum, |max|, non-zeros, ...)
as soon as it is seen, so the tensor itself can be freed. On a small model the
number of calls is the cost, not the data, so each tensor is read in as few as
possible:

- CPU float32/float64/float16/bfloat16 tensors whose elements fill one block of memory are
  read once by the C extension ``_reduce`` (built with the package when a C compiler
  is there; a run's metadata says ``"stats": "native"`` or ``"numpy"``): one call of ~1 µs
  plus ~0.15 ns per element with AVX2, all statistics exact (16-bit elements are converted
  exactly and summed in float, bfloat16 in double). On LeNet-5's gradients that is 10-40x
  fewer microseconds than NumPy.
- Without the extension, CPU float32/float64 tensors up to 2^20 elements are reduced with
  NumPy on a zero-copy view (``host.py``: 4-5 calls of ~1-2 µs; a torch op costs 5-10 µs).
- Tensors on an accelerator stay there (``device.py``): batched device ops, no host
  synchronisation until :func:`read_rows`, which copies every pending number of a step to
  the host at once (one transfer per device). :func:`force_device_path` runs that path on
  CPU tensors (tests).
- Anything else on the CPU (bigger tensors, other dtypes, non-block views) is reduced with
  torch ops into a small float64 tensor, read back by :func:`read_rows` too.

Activation statistics (mean, std, zero and saturated fractions: population
statistics) come from an even sample above :data:`ACT_EXACT_MAX` elements with
the extension. Gradient norms, sums and |max| are always exact. NaN/Inf are
counted where the norm is not finite (always on accelerators, without a branch).

Example:
    >>> import torch
    >>> [s] = batch_grad_stats([[torch.tensor([3.0, 0.0, -4.0])]])
    >>> s["grad_norm"], s["grad_absmax"], round(s["grad_zero_frac"], 3)
    (5.0, 4.0, 0.333)
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from graphviz_autograd.live.tensors import PLAIN_TYPES, plain
from graphviz_autograd.record import device
from graphviz_autograd.record.host import (EXACT_COUNT_MAX, NUMPY_MAX, as_numpy, block,  # noqa: F401
                                           fits_storage, np_act_row, np_grad_row, np_ss,
                                           sample_stride)

try:
    from . import _reduce as NATIVE
except ImportError:        # built without a C compiler: NumPy and torch do it
    NATIVE = None

GRAD_STATS = ("grad_norm", "grad_mean", "grad_std", "grad_absmax", "grad_zero_frac",
              "grad_nan", "grad_inf")
ACT_STATS = ("act_mean", "act_std", "act_zero_frac", "act_sat_frac")
# A gradient row: sum of squares, sum, |max|, non-zeros, NaNs, Infs, numel.
# An activation row: sum, sum of squares, non-zeros, saturated (-1: not applicable), numel.
ACT_EXACT_MAX = 1 << 22    # with the extension, activations are sampled (2^20 elements) above this
_SAT_CODES = {None: 0, "tanh": 1, "sigmoid": 2}
_EXACT_DTYPES = (torch.float32, torch.float64)
_block, _as_numpy = block, as_numpy         # the names the tests and older callers use


@contextlib.contextmanager
def force_device_path(on: bool = True):
    """Compute statistics of CPU tensors as on an accelerator while inside (device ops and
    one explicit copy to the host per :func:`read_rows`), to test that path without a GPU.

    Example:
        >>> with force_device_path():
        ...     [s] = batch_grad_stats([[torch.tensor([3.0, 0.0, -4.0])]])
        >>> s["grad_norm"]
        5.0
    """
    before = device.FORCE
    device.FORCE = on
    try:
        yield
    finally:
        device.FORCE = before


def _flat(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.layout is not torch.strided:
        t = t.coalesce().values() if t.is_sparse else t.to_dense()
    if t.is_complex():
        t = t.abs()
    if not t.is_floating_point():
        t = t.float()
    return t.reshape(-1)


def nonzero_count(f: torch.Tensor) -> torch.Tensor:
    """Non-zero elements of flat ``f`` as a float64 0-d tensor (sampled above 65,536 elements).

    Counting is the slowest reduction here (a full pass that cannot vectorise
    like a sum), so large tensors are sampled with an odd stride.
    """
    n = f.numel()
    if n <= EXACT_COUNT_MAX:
        return (f != 0).sum().double()
    sample = f[::sample_stride(n)]
    return (sample != 0).sum().double() * (n / sample.numel())


def _native_act_row(blk, saturation: str | None) -> tuple:
    address, n, code = blk
    stride = 1 if n <= ACT_EXACT_MAX else sample_stride(n, 1 << 20)
    return NATIVE.act(address, n, stride, code, _SAT_CODES[saturation])


def grad_row(t: torch.Tensor | None):
    """The reductions of one gradient: a list of floats, a pending row (a float64 tensor or a
    device row), or None if empty or unreadable. A DTensor gives its local shard's row (the
    caller combines shards)."""
    if t is None:
        return None
    if type(t) not in PLAIN_TYPES:      # never hand a wrapper subclass's "address" to C
        local = plain(t)
        if local is None:
            return _subclass_row(_torch_grad_row, t)
        t = local
    if not t.is_cpu or device.FORCE:
        return device.grad_row(t)
    if NATIVE is not None:
        blk = block(t)
        if blk is not None:
            return NATIVE.grad(*blk) if blk[1] else None
    if not t.numel():
        return None
    a = as_numpy(t)
    if a is not None:
        return np_grad_row(a)
    return _torch_grad_row(t)


def _subclass_row(row_of, t, *args):
    """The row of a tensor subclass we cannot read directly, from torch ops, when they give a
    plain tensor; None when they fail or give a subclass (its ``tolist()`` would fail the whole
    step's read-back)."""
    try:
        row = row_of(t, *args) if t.numel() else None
    except Exception:  # noqa: BLE001 - a subclass may refuse any op: no statistic, no error
        return None
    return row if row is None or type(row) in PLAIN_TYPES else None


def _torch_grad_row(t: torch.Tensor):
    f = _flat(t)
    with torch.no_grad():
        d = f if f.dtype in _EXACT_DTYPES else f.double()
        ss = torch.dot(d, d).double()
        lo, hi = torch.aminmax(f)
        if f.device.type == "cpu" and math.isfinite(float(ss)):     # a CPU number: no sync
            counts = (ss.new_zeros(()), ss.new_zeros(()))
        else:
            counts = (torch.isnan(f).sum().double(), torch.isinf(f).sum().double())
        return torch.stack([ss, d.sum().double(), torch.maximum(-lo, hi).double(), nonzero_count(f),
                            *counts, torch.full((), float(f.numel()), dtype=torch.float64,
                                                device=f.device)])


def act_row(t: torch.Tensor, saturation: str | None):
    """The reductions of one activation (see :func:`grad_row` for the forms it takes).

    ``saturation`` is ``"tanh"`` (|y| > 0.99), ``"sigmoid"`` (y < 0.01 or y > 0.99) or None.
    """
    if type(t) not in PLAIN_TYPES:
        local = plain(t)
        if local is None:
            return _subclass_row(_torch_act_row, t, saturation)
        t = local
    if not t.is_cpu or device.FORCE:
        return device.act_row(t, saturation)
    if not t.numel():
        return None
    if NATIVE is not None:
        blk = block(t)
        if blk is not None:
            return _native_act_row(blk, saturation)
    a = as_numpy(t)
    if a is not None:
        return np_act_row(a, saturation)
    return _torch_act_row(t, saturation)


def _torch_act_row(t: torch.Tensor, saturation: str | None):
    n = t.numel()
    f = _flat(t)
    if n > EXACT_COUNT_MAX:
        f = f[::sample_stride(n)]
    with torch.no_grad():
        if saturation is not None:      # 16-bit values compared as the C extension does
            sat = device.saturated(f, saturation, torch.float64)
        else:
            sat = torch.full((), -1.0, dtype=torch.float64, device=f.device)
        d = f if f.dtype in _EXACT_DTYPES else f.double()
        scale = n / f.numel()
        row = torch.stack([d.sum().double(), torch.dot(d, d).double(), (f != 0).sum().double(), sat])
        if saturation is not None:
            row = row * scale
        else:
            row = torch.cat([row[:3] * scale, row[3:]])
        return torch.cat([row, torch.full((1,), float(n), dtype=torch.float64, device=row.device)])


def read_rows(rows: list) -> list:
    """``rows`` with every pending row turned into floats: one copy to the host per device
    for the whole list (and for the values :func:`sq_norms` and :class:`UpdateNorms` left
    pending), the only point where statistics wait for an accelerator."""
    pending = [i for i, r in enumerate(rows) if isinstance(r, (torch.Tensor, device.Row))]
    values = device.read([rows[i] for i in pending])
    if not pending:
        return rows
    out = list(rows)
    for i, v in zip(pending, values):
        out[i] = v
    return out


def grad_values(rows: list) -> tuple | None:
    """The :data:`GRAD_STATS` of the elements of several gradient rows together, in that
    order (None if there are none)."""
    if len(rows) == 1:                  # most keys: one tensor
        if rows[0] is None:
            return None
        ss, s, amax, nzc, nan, inf, n = rows[0]
        rows = ()
    else:
        rows = [r for r in rows if r is not None]
        if not rows:
            return None
        ss, s, amax, nzc, nan, inf, n = rows[0]
        rows = rows[1:]
    for r in rows:
        ss, s, nzc, nan, inf, n = ss + r[0], s + r[1], nzc + r[3], nan + r[4], inf + r[5], n + r[6]
        amax = r[2] if math.isnan(r[2]) or r[2] > amax else amax
    mean = s / n
    var = (ss - n * mean * mean) / (n - 1) if n > 1 else 0.0
    std = math.sqrt(var) if var > 0 else (var if math.isnan(var) else 0.0)
    return (math.sqrt(ss) if ss >= 0 else math.nan, mean, std, amax, 1.0 - nzc / n, nan, inf)


def grad_stats(rows: list) -> dict[str, float] | None:
    """Readable statistics of the elements of several gradient rows together (None if none)."""
    values = grad_values(rows)
    return None if values is None else dict(zip(GRAD_STATS, values))


def act_values(rows: list) -> tuple | None:
    """The :data:`ACT_STATS` of one or more activation rows together, in that order; the
    saturated fraction is None where it does not apply (None if there are no rows)."""
    rows = [r for r in rows if r is not None]
    if not rows:
        return None
    s, ss, nz, sat, n = rows[0] if len(rows) == 1 else [sum(col) for col in zip(*rows)]
    mean = s / n
    var = (ss - n * mean * mean) / (n - 1) if n > 1 else 0.0
    saturated = sat / n if all(r[3] >= 0 for r in rows) else None
    return (mean, math.sqrt(var) if var > 0 else 0.0, 1.0 - nz / n, saturated)


def act_stats(rows: list) -> dict[str, float]:
    """Readable statistics of one or more activation rows together (missing ones left out)."""
    values = act_values(rows)
    if values is None:
        return {}
    return {k: v for k, v in zip(ACT_STATS, values) if v is not None}


def saturation_kind(op_or_module: str) -> str | None:
    """Which saturation test applies to an op name or module class name."""
    name = op_or_module.lower()
    if "tanh" in name:
        return "tanh"
    if "sigmoid" in name:
        return "sigmoid"
    return None


def batch_grad_stats(groups: list[list[torch.Tensor]]) -> list[dict[str, float] | None]:
    """Gradient statistics of many groups of tensors (one parameter's or one node's gradients)."""
    rows = [[grad_row(t) for t in group] for group in groups]
    flat = read_rows([r for group in rows for r in group])
    out, k = [], 0
    for group in rows:
        out.append(grad_stats(flat[k:k + len(group)]))
        k += len(group)
    return out


def sq_norms(tensors: list[torch.Tensor], views: TensorViews | None = None, *,
             pending: bool = False) -> list[float]:
    """Squared L2 norms of many tensors: natively or with NumPy on the CPU, batched on a device.

    Device norms are read back here with one transfer per device, or, with ``pending=True``,
    left as NaN placeholders that the next :func:`read_rows` fills in place (so they share
    that step's one transfer). ``views``: the :class:`TensorViews` of ``tensors`` when there
    is one (cached views).
    """
    out: list = []
    slow, on_device = [], []
    flat = views.get() if views is not None else None
    blocks = views.blocks if views is not None else None
    for i, t in enumerate(tensors):
        if blocks is not None:
            blk = blocks[i]
        else:
            blk = block(t) if NATIVE is not None else None
        if blk is not None:
            out.append(NATIVE.grad(*blk)[0])
            continue
        if device.wanted(t):
            on_device.append(i)
            out.append(math.nan)
            continue
        a = flat[i] if flat is not None else as_numpy(t)
        if a is None:
            slow.append(i)
            out.append(None)
        else:
            out.append(np_ss(a))
    if slow:                            # CPU tensors: reading them back waits for nothing
        with torch.no_grad():
            norms = torch.stack([n.double() for n in torch._foreach_norm([tensors[i].detach() for i in slow])])
        for i, v in zip(slow, norms.tolist()):
            out[i] = v * v
    if on_device:
        rows = device.sq_rows([tensors[i] for i in on_device])
        if pending:
            for i, row in zip(on_device, rows):
                device.fill_later(out, i, row)
        else:
            for i, v in zip(on_device, read_rows(rows)):
                out[i] = v
    return out


class TensorViews:      # views built once, not per step (bench_recorder.py lenet: update ratios)
    """Flat NumPy views (and :data:`NATIVE` blocks) of a fixed list of tensors (the
    parameters), rebuilt only when a storage moves.

    ``generation`` counts rebuilds, so users of the views know when to rebuild their own buffers.
    """

    def __init__(self, tensors: list[torch.Tensor]):
        self.tensors = tensors
        self.generation = 0
        self._ptrs: list[tuple] | None = None
        self._forced = device.FORCE
        self._views: list = []
        self.blocks: list = []

    def get(self) -> list:
        # address, size, dtype and device: a native block must never outgrow its memory
        ptrs = [(t.data_ptr(), t.numel(), t.dtype, t.is_cpu) for t in self.tensors]
        if ptrs != self._ptrs or self._forced != device.FORCE:
            fits = [fits_storage(t) for t in self.tensors]
            self._views = [as_numpy(t) if ok else None for t, ok in zip(self.tensors, fits)]
            self.blocks = [block(t) if NATIVE is not None and ok else None
                           for t, ok in zip(self.tensors, fits)]
            self._ptrs, self._forced = ptrs, device.FORCE
            self.generation += 1
        return self._views


class UpdateNorms:
    """``||w_before - w_after||^2`` of every parameter across one ``optimizer.step()``, and
    ``||w_after||^2`` found on the way (:attr:`after_sq`).

    One buffer, allocated once with the parameters' memory layout, holds them before the step.
    On a device both are computed there and left pending (NaN) until the next
    :func:`read_rows` fills the returned list and :attr:`after_sq` in place.
    """

    def __init__(self, params: list[torch.Tensor]):
        self.params = TensorViews(params)
        self.after_sq: list[float] | None = None
        self._buf: list[torch.Tensor] = []
        self._buf_np: list = []
        self._pairs: list = []      # (buffer address, parameter address, numel, dtype code) or None
        self._native: list = []     # the pairs that are not None, for one native call
        self._generation = -1

    def before(self) -> None:
        params, views = self.params.tensors, self.params.get()
        if self._generation != self.params.generation:
            with torch.no_grad():
                self._buf = [p.detach().clone() for p in params]    # same strides: copies are block copies
            self._buf_np = [as_numpy(b) for b in self._buf]
            self._pairs = [(b.data_ptr(), *blk) if blk is not None and b.stride() == p.stride()
                           else None for b, p, blk in zip(self._buf, params, self.params.blocks)]
            self._native = [pair for pair in self._pairs if pair is not None]
            self._generation = self.params.generation
            return
        if self._native:
            NATIVE.copy_many(self._native)
        if len(self._native) == len(params):
            return
        rest_dst, rest_src = [], []
        for b, bn, p, pn, pair in zip(self._buf, self._buf_np, params, views, self._pairs):
            if pair is not None:
                continue
            if bn is not None and pn is not None:
                np.copyto(bn, pn)
            else:
                rest_dst.append(b), rest_src.append(p.detach())
        if rest_dst:
            with torch.no_grad():
                torch._foreach_copy_(rest_dst, rest_src)

    def after(self) -> list[float]:
        params, views = self.params.tensors, self.params.get()
        self.after_sq = None
        if self._generation != self.params.generation:     # moved during the step: no update to measure
            return [math.nan] * len(params)
        native = iter(NATIVE.diff_many(self._native)) if self._native else iter(())
        out: list = [None] * len(params)
        after_sq: list = [None] * len(params)
        rest = []
        for i, (b, bn, p, pn, pair) in enumerate(zip(self._buf, self._buf_np, params, views, self._pairs)):
            if pair is not None:
                out[i], after_sq[i] = next(native)      # one pass, nothing written
            elif bn is not None and pn is not None:
                np.subtract(bn, pn, out=bn)
                out[i] = np_ss(bn)
            else:
                rest.append(i)
        if rest:
            with torch.no_grad():
                torch._foreach_sub_([self._buf[i] for i in rest], [params[i].detach() for i in rest])
            on_host = [i for i in rest if not device.wanted(params[i])]
            for i, v in zip(on_host, sq_norms([self._buf[i] for i in on_host])):
                out[i] = v
            on_device = [i for i in rest if device.wanted(params[i])]
            if on_device:                   # filled in place by the step's read_rows
                diffs = device.sq_rows([self._buf[i] for i in on_device])
                norms = device.sq_rows([params[i] for i in on_device])
                for i, diff, norm in zip(on_device, diffs, norms):
                    out[i] = after_sq[i] = math.nan
                    device.fill_later(out, i, diff)
                    device.fill_later(after_sq, i, norm)
        if None not in after_sq:
            self.after_sq = after_sq
        return out

    def clear(self) -> None:
        self._buf, self._buf_np, self._pairs, self._native, self._generation = [], [], [], [], -1
        self.after_sq = None
