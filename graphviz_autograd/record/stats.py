"""Gradient and activation statistics, computed in as few calls as possible.

Each tensor becomes a *row* of sums (sum of squares, sum, |max|, non-zeros, ...)
as soon as it is seen, so the tensor itself can be freed. On a small model the
number of calls is the cost, not the data, so each tensor is read in as few as
possible:

- CPU float32/float64 tensors whose elements fill one block of memory are read
  once by the C extension ``_reduce`` (built with the package when a C compiler
  is there; a run's metadata says ``"stats": "native"`` or ``"numpy"``): one call of ~1 µs
  plus ~0.15 ns per element with AVX2, all statistics exact. On LeNet-5's
  gradients that is 10-40x fewer microseconds than NumPy.
- Without the extension, CPU tensors up to 2^20 elements are reduced with NumPy
  on a zero-copy view (4-5 calls of ~1-2 µs; a torch op costs 5-10 µs, more when
  it wakes torch's thread pool). Dot products go through BLAS only up to 10,000
  elements, where OpenBLAS stays on the calling thread; above that ``einsum``
  does, so NumPy never starts threads that compete with torch's. Above 65,536
  elements gradient zero counts and activation statistics are estimated from an
  even sample (errors ~0.4%).
- Bigger tensors, other dtypes and other devices are reduced with torch ops
  into a small float64 tensor; :func:`read_rows` reads all of those back with
  one ``tolist()`` (one device sync per step).

Activation statistics (mean, std, zero and saturated fractions: population
statistics) come from an even sample above :data:`ACT_EXACT_MAX` elements with
the extension. Gradient norms, sums and |max| are always exact. NaN/Inf are
counted where the norm is not finite (always on accelerators, to avoid a sync
per tensor).

Example:
    >>> import torch
    >>> [s] = batch_grad_stats([[torch.tensor([3.0, 0.0, -4.0])]])
    >>> s["grad_norm"], s["grad_absmax"], round(s["grad_zero_frac"], 3)
    (5.0, 4.0, 0.333)
"""
from __future__ import annotations

import math

import numpy as np
import torch

from graphviz_autograd.live.tensors import PLAIN_TYPES, plain

try:
    from . import _reduce as NATIVE
except ImportError:        # built without a C compiler: NumPy and torch do it
    NATIVE = None

GRAD_STATS = ("grad_norm", "grad_mean", "grad_std", "grad_absmax", "grad_zero_frac",
              "grad_nan", "grad_inf")
ACT_STATS = ("act_mean", "act_std", "act_zero_frac", "act_sat_frac")
# A gradient row: sum of squares, sum, |max|, non-zeros, NaNs, Infs, numel.
# An activation row: sum, sum of squares, non-zeros, saturated (-1: not applicable), numel.
_BLAS_MAX = 10_000         # OpenBLAS uses threads above this; einsum stays on this thread (bench_recorder.py: +0.3 ms on the next step after a threaded np.dot)
EXACT_COUNT_MAX = 65_536   # without the extension, zero fractions are sampled above this
ACT_EXACT_MAX = 1 << 22    # with it, activations are sampled (2^20 elements) above this
_SAT_CODES = {None: 0, "tanh": 1, "sigmoid": 2}
_NUMPY_DTYPES = (torch.float32, torch.float64)


def _flat(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.layout is not torch.strided:
        t = t.coalesce().values() if t.is_sparse else t.to_dense()
    if t.is_complex():
        t = t.abs()
    if not t.is_floating_point():
        t = t.float()
    return t.reshape(-1)


def _sample_stride(n: int, size: int = EXACT_COUNT_MAX) -> int:
    """Stride of an even sample of about ``size`` of ``n`` elements: coprime with ``n``
    (so it does not line up with the tensor's dimensions); errors ~0.4% at 65,536."""
    stride = max(n // size, 1) | 1
    while stride > 1 and math.gcd(stride, n) != 1:
        stride += 2
    return stride


def nonzero_count(f: torch.Tensor) -> torch.Tensor:
    """Non-zero elements of flat ``f`` as a float64 0-d tensor (sampled above 65,536 elements).

    Counting is the slowest reduction here (a full pass that cannot vectorise
    like a sum), so large tensors are sampled with an odd stride.
    """
    n = f.numel()
    if n <= EXACT_COUNT_MAX:
        return (f != 0).sum().double()
    sample = f[::_sample_stride(n)]
    return (sample != 0).sum().double() * (n / sample.numel())


_ONES: dict = {}            # a ones vector per dtype: np.dot(a, ones) sums on BLAS (bench_recorder.py lenet, NumPy path)


def _ones(dtype, n: int) -> np.ndarray:
    ones = _ONES.get(dtype)
    if ones is None or ones.size < n:
        ones = _ONES[dtype] = np.ones(max(n, _BLAS_MAX), dtype)
    return ones[:n]


def _one_block(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill one block of memory from its first address (some order)."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


_F32, _F64, _STRIDED = torch.float32, torch.float64, torch.strided


def _block(t: torch.Tensor):
    """``(address, numel, is_float64)`` of a CPU float32/float64 tensor whose elements fill one
    block of memory from its first address (in some order), for :data:`NATIVE`; else None.

    Called for every gradient of a recorded step, so it uses the cheapest checks
    (``is_cpu`` costs 60 ns, ``device.type`` 650 ns).
    """
    dtype = t.dtype
    if ((dtype is not _F32 and dtype is not _F64) or not t.is_cpu or t.layout is not _STRIDED
            or type(t) not in PLAIN_TYPES or t.is_neg() or not (t.is_contiguous() or _one_block(t))):
        return None
    address = t.data_ptr()      # 0 for tensors whose storage was freed
    return (address, t.numel(), dtype is _F64) if address else None


def _fits_storage(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements lie inside its storage (a parameter whose storage was freed or
    shrunk, as FSDP does to unsharded parameters, must never be read)."""
    try:
        end = (t.storage_offset() + t.numel()) * t.element_size()
        return t.untyped_storage().nbytes() >= end
    except (RuntimeError, NotImplementedError):
        return False


def _native_act_row(block, saturation: str | None) -> tuple:
    address, n, is_double = block
    stride = 1 if n <= ACT_EXACT_MAX else _sample_stride(n, 1 << 20)
    return NATIVE.act(address, n, stride, is_double, _SAT_CODES[saturation])


NUMPY_MAX = 1 << 20         # above this many elements torch's multi-threaded reductions win (bench_recorder.py resnet18)


def _as_numpy(t: torch.Tensor) -> np.ndarray | None:
    """A flat zero-copy NumPy view of a dense CPU float tensor; None when there is none
    (or when it is big enough for torch's thread pool to beat a NumPy pass)."""
    if (t.device.type != "cpu" or t.dtype not in _NUMPY_DTYPES or t.layout is not torch.strided
            or t.numel() > NUMPY_MAX or type(t) not in PLAIN_TYPES):
        return None
    t = t.detach()
    if not t.is_contiguous() and _one_block(t):
        # e.g. a transposed gradient: the same elements lie in one block, in another order,
        # and every statistic here ignores order; read the block instead of copying
        t = t.as_strided((t.numel(),), (1,))
    try:
        return t.numpy().reshape(-1)
    except (RuntimeError, TypeError):   # e.g. a tensor with the negative or conjugate bit set
        return None


def _np_ss(a: np.ndarray) -> float:
    """Sum of squares of flat ``a``, without waking OpenBLAS threads."""
    return float(np.dot(a, a) if a.size <= _BLAS_MAX else np.einsum("i,i->", a, a))


def _np_nonzero(a: np.ndarray) -> float:
    if a.size <= EXACT_COUNT_MAX:
        return float(np.count_nonzero(a))
    sample = a[::_sample_stride(a.size)]
    return np.count_nonzero(sample) * (a.size / sample.size)


def _np_sums(a: np.ndarray) -> tuple[float, float]:
    """Sum of squares and sum of flat ``a``."""
    total = np.dot(a, _ones(a.dtype, a.size)) if a.size <= _BLAS_MAX else np.einsum("i->", a)
    return _np_ss(a), float(total)


def grad_row(t: torch.Tensor | None):
    """The reductions of one gradient: a list of floats, a pending float64 tensor, or None if
    empty or unreadable. A DTensor gives its local shard's row (the caller combines shards)."""
    if t is None:
        return None
    if type(t) not in PLAIN_TYPES:      # never hand a wrapper subclass's "address" to C
        local = plain(t)
        if local is None:
            return _subclass_row(_torch_grad_row, t)
        t = local
    if NATIVE is not None:
        block = _block(t)
        if block is not None:
            return NATIVE.grad(*block) if block[1] else None
    if not t.numel():
        return None
    a = _as_numpy(t)
    if a is not None:
        ss, total = _np_sums(a)
        lo, hi = float(a.min()), float(a.max())
        nan = inf = 0.0
        if not math.isfinite(ss):
            nan, inf = float(np.isnan(a).sum()), float(np.isinf(a).sum())
        return [ss, total, math.nan if lo != lo or hi != hi else max(-lo, hi),
                _np_nonzero(a), nan, inf, float(a.size)]
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
        d = f if f.dtype in _NUMPY_DTYPES else f.double()
        ss = torch.dot(d, d).double()
        lo, hi = torch.aminmax(f)
        if f.device.type == "cpu" and math.isfinite(float(ss)):
            counts = (ss.new_zeros(()), ss.new_zeros(()))
        else:
            counts = (torch.isnan(f).sum().double(), torch.isinf(f).sum().double())
        return torch.stack([ss, d.sum().double(), torch.maximum(-lo, hi).double(), nonzero_count(f),
                            *counts, ss.new_tensor(float(f.numel()))])


def act_row(t: torch.Tensor, saturation: str | None):
    """The reductions of one activation (see :func:`grad_row` for the forms it takes).

    ``saturation`` is ``"tanh"`` (|y| > 0.99), ``"sigmoid"`` (y < 0.01 or y > 0.99) or None.
    """
    if type(t) not in PLAIN_TYPES:
        local = plain(t)
        if local is None:
            return _subclass_row(_torch_act_row, t, saturation)
        t = local
    if not t.numel():
        return None
    if NATIVE is not None:
        block = _block(t)
        if block is not None:
            return _native_act_row(block, saturation)
    n = t.numel()
    a = _as_numpy(t)
    if a is not None:
        if n > EXACT_COUNT_MAX:         # population statistics: an even sample estimates them
            a = a[::_sample_stride(n)]
        scale = n / a.size
        if saturation == "tanh":
            sat = float(np.count_nonzero(np.abs(a) > 0.99))
        elif saturation == "sigmoid":
            sat = float(np.count_nonzero((a < 0.01) | (a > 0.99)))
        else:
            sat = -1.0
        ss, total = _np_sums(a)
        return [total * scale, ss * scale, float(np.count_nonzero(a)) * scale,
                sat * scale if sat >= 0 else -1.0, float(n)]
    return _torch_act_row(t, saturation)


def _torch_act_row(t: torch.Tensor, saturation: str | None):
    n = t.numel()
    f = _flat(t)
    if n > EXACT_COUNT_MAX:
        f = f[::_sample_stride(n)]
    with torch.no_grad():
        if saturation == "tanh":
            sat = (f.abs() > 0.99).sum().double()
        elif saturation == "sigmoid":
            sat = ((f < 0.01) | (f > 0.99)).sum().double()
        else:
            sat = torch.tensor(-1.0, dtype=torch.float64, device=f.device)
        d = f if f.dtype in _NUMPY_DTYPES else f.double()
        scale = n / f.numel()
        row = torch.stack([d.sum().double(), torch.dot(d, d).double(), (f != 0).sum().double(), sat])
        return torch.cat([row * torch.tensor([scale, scale, scale, scale if saturation else 1.0],
                                             dtype=torch.float64, device=row.device),
                          row.new_tensor([float(n)])])


def read_rows(rows: list) -> list:
    """``rows`` with every pending tensor row turned into floats, with one ``tolist()``."""
    pending = [i for i, r in enumerate(rows) if isinstance(r, torch.Tensor)]
    if not pending:
        return rows
    out = list(rows)
    by_device: dict = {}
    for i in pending:
        by_device.setdefault(rows[i].device, []).append(i)
    for idx in by_device.values():           # one sync per device
        values, k = torch.cat([rows[i] for i in idx]).tolist(), 0
        for i in idx:
            n = rows[i].numel()
            out[i], k = values[k:k + n], k + n
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


def sq_norms(tensors: list[torch.Tensor], views: TensorViews | None = None) -> list[float]:
    """Squared L2 norms of many tensors (NumPy on the CPU, one sync otherwise).

    ``views``: the :class:`TensorViews` of ``tensors`` when there is one (cached views).
    """
    out: list[float | None] = []
    slow = []
    flat = views.get() if views is not None else None
    blocks = views.blocks if views is not None else None
    for i, t in enumerate(tensors):
        if blocks is not None:
            block = blocks[i]
        else:
            block = _block(t) if NATIVE is not None else None
        if block is not None:
            out.append(NATIVE.grad(*block)[0])
            continue
        a = flat[i] if flat is not None else _as_numpy(t)
        if a is None:
            slow.append(i)
            out.append(None)
        else:
            out.append(_np_ss(a))
    if slow:
        with torch.no_grad():
            norms = torch.stack([n.double().cpu() for n in torch._foreach_norm([tensors[i].detach() for i in slow])])
        for i, v in zip(slow, norms.tolist()):
            out[i] = v * v
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
        self._views: list = []
        self.blocks: list = []

    def get(self) -> list:
        # address, size, dtype and device: a native block must never outgrow its memory
        ptrs = [(t.data_ptr(), t.numel(), t.dtype, t.is_cpu) for t in self.tensors]
        if ptrs != self._ptrs:
            fits = [_fits_storage(t) for t in self.tensors]
            self._views = [_as_numpy(t) if ok else None for t, ok in zip(self.tensors, fits)]
            self.blocks = [_block(t) if NATIVE is not None and ok else None
                           for t, ok in zip(self.tensors, fits)]
            self._ptrs = ptrs
            self.generation += 1
        return self._views


class UpdateNorms:
    """``||w_before - w_after||^2`` of every parameter across one ``optimizer.step()``, and
    ``||w_after||^2`` found on the way (:attr:`after_sq`).

    One buffer, allocated once with the parameters' memory layout, holds them before the step.
    """

    def __init__(self, params: list[torch.Tensor]):
        self.params = TensorViews(params)
        self.after_sq: list[float] | None = None
        self._buf: list[torch.Tensor] = []
        self._buf_np: list = []
        self._pairs: list = []      # (buffer address, parameter address, numel, is_float64) or None
        self._native: list = []     # the pairs that are not None, for one native call
        self._generation = -1

    def before(self) -> None:
        params, views = self.params.tensors, self.params.get()
        if self._generation != self.params.generation:
            with torch.no_grad():
                self._buf = [p.detach().clone() for p in params]    # same strides: copies are block copies
            self._buf_np = [_as_numpy(b) for b in self._buf]
            self._pairs = [(b.data_ptr(), *block) if block is not None and b.stride() == p.stride()
                           else None for b, p, block in zip(self._buf, params, self.params.blocks)]
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
                out[i] = _np_ss(bn)
            else:
                rest.append(i)
        if rest:
            with torch.no_grad():
                torch._foreach_sub_([self._buf[i] for i in rest], [params[i].detach() for i in rest])
            for i, v in zip(rest, sq_norms([self._buf[i] for i in rest])):
                out[i] = v
        if None not in after_sq:
            self.after_sq = after_sq
        return out

    def clear(self) -> None:
        self._buf, self._buf_np, self._pairs, self._native, self._generation = [], [], [], [], -1
        self.after_sq = None
