"""CPU tensors read in place: memory blocks for the C extension, zero-copy NumPy views and the
NumPy reductions used without it (``stats`` chooses among them).

Dot products go through BLAS only up to 10,000 elements, where OpenBLAS stays on the calling
thread; above that ``einsum`` does, so NumPy never starts threads that compete with torch's.
Above 65,536 elements NumPy's zero counts and activation statistics are estimated from an even
sample (errors ~0.4%).

Example:
    >>> import torch
    >>> a = as_numpy(torch.tensor([[3.0, 0.0], [-4.0, 1.0]]).t())    # transposed: one block
    >>> np_grad_row(a)
    [26.0, 0.0, 4.0, 3.0, 0.0, 0.0, 4.0]
"""
from __future__ import annotations

import math

import numpy as np
import torch

from graphviz_autograd.live.tensors import PLAIN_TYPES
from graphviz_autograd.record import device

_BLAS_MAX = 10_000         # OpenBLAS uses threads above this; einsum stays on this thread (bench_recorder.py: +0.3 ms on the next step after a threaded np.dot)
EXACT_COUNT_MAX = 65_536   # without the extension, zero fractions are sampled above this
NUMPY_MAX = 1 << 20        # above this many elements torch's multi-threaded reductions win (bench_recorder.py resnet18)
_NUMPY_DTYPES = (torch.float32, torch.float64)
_F32, _F64, _F16, _BF16, _STRIDED = torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.strided
# the element codes of the C extension (_reduce.c checks them)
DTYPE_CODES = {_F32: 0, _F64: 1, _F16: 2, _BF16: 3}


def sample_stride(n: int, size: int = EXACT_COUNT_MAX) -> int:
    """Stride of an even sample of about ``size`` of ``n`` elements: coprime with ``n``
    (so it does not line up with the tensor's dimensions); errors ~0.4% at 65,536."""
    stride = max(n // size, 1) | 1
    while stride > 1 and math.gcd(stride, n) != 1:
        stride += 2
    return stride


def one_block(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill one block of memory from its first address (some order)."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def block(t: torch.Tensor):
    """``(address, numel, dtype code)`` of a CPU float32/float64/float16/bfloat16 tensor whose
    elements fill one block of memory from its first address (in some order), for the C
    extension; else None.

    Called for every gradient of a recorded step, so it uses the cheapest checks
    (``is_cpu`` costs 60 ns, ``device.type`` 650 ns). Plain tensor types only (a wrapper
    subclass's address is not its data), never the negative bit, never past the end of its
    storage (freed or shrunk, as FSDP does to unsharded parameters).
    """
    code = DTYPE_CODES.get(t.dtype)
    if (code is None or not t.is_cpu or t.layout is not _STRIDED or type(t) not in PLAIN_TYPES
            or t.is_neg() or device.FORCE or not (t.is_contiguous() or one_block(t))):
        return None
    address = t.data_ptr()      # 0 for tensors whose storage was freed
    n = t.numel()
    if not address or t.untyped_storage().nbytes() < (t.storage_offset() + n) * t.element_size():
        return None             # (a storage shrunk under the tensor: never read past its end)
    return (address, n, code)


def fits_storage(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements lie inside its storage (a parameter whose storage was freed or
    shrunk, as FSDP does to unsharded parameters, must never be read)."""
    try:
        end = (t.storage_offset() + t.numel()) * t.element_size()
        return t.untyped_storage().nbytes() >= end
    except (RuntimeError, NotImplementedError):
        return False


def as_numpy(t: torch.Tensor) -> np.ndarray | None:
    """A flat zero-copy NumPy view of a dense CPU float32/float64 tensor; None when there is
    none (or when it is big enough for torch's thread pool to beat a NumPy pass)."""
    if (t.device.type != "cpu" or t.dtype not in _NUMPY_DTYPES or t.layout is not torch.strided
            or t.numel() > NUMPY_MAX or type(t) not in PLAIN_TYPES or device.FORCE):
        return None
    t = t.detach()
    if not t.is_contiguous() and one_block(t):
        # e.g. a transposed gradient: the same elements lie in one block, in another order,
        # and every statistic here ignores order; read the block instead of copying
        t = t.as_strided((t.numel(),), (1,))
    try:
        return t.numpy().reshape(-1)
    except (RuntimeError, TypeError):   # e.g. a tensor with the negative or conjugate bit set
        return None


_ONES: dict = {}            # a ones vector per dtype: np.dot(a, ones) sums on BLAS (bench_recorder.py lenet, NumPy path)


def _ones(dtype, n: int) -> np.ndarray:
    ones = _ONES.get(dtype)
    if ones is None or ones.size < n:
        ones = _ONES[dtype] = np.ones(max(n, _BLAS_MAX), dtype)
    return ones[:n]


def np_ss(a: np.ndarray) -> float:
    """Sum of squares of flat ``a``, without waking OpenBLAS threads."""
    return float(np.dot(a, a) if a.size <= _BLAS_MAX else np.einsum("i,i->", a, a))


def _np_nonzero(a: np.ndarray) -> float:
    if a.size <= EXACT_COUNT_MAX:
        return float(np.count_nonzero(a))
    sample = a[::sample_stride(a.size)]
    return np.count_nonzero(sample) * (a.size / sample.size)


def _np_sums(a: np.ndarray) -> tuple[float, float]:
    """Sum of squares and sum of flat ``a``."""
    total = np.dot(a, _ones(a.dtype, a.size)) if a.size <= _BLAS_MAX else np.einsum("i->", a)
    return np_ss(a), float(total)


def np_grad_row(a: np.ndarray) -> list:
    """The gradient row of a flat non-empty array (zero count sampled above 65,536 elements)."""
    ss, total = _np_sums(a)
    lo, hi = float(a.min()), float(a.max())
    nan = inf = 0.0
    if not math.isfinite(ss):
        nan, inf = float(np.isnan(a).sum()), float(np.isinf(a).sum())
    return [ss, total, math.nan if lo != lo or hi != hi else max(-lo, hi),
            _np_nonzero(a), nan, inf, float(a.size)]


def np_act_row(a: np.ndarray, saturation: str | None) -> list:
    """The activation row of a flat non-empty array (estimated from an even sample above
    65,536 elements)."""
    n = a.size
    if n > EXACT_COUNT_MAX:         # population statistics: an even sample estimates them
        a = a[::sample_stride(n)]
    scale = n / a.size
    hi, lo = device.thresholds(_F32 if a.dtype == np.float32 else _F64)
    if saturation == "tanh":
        sat = float(np.count_nonzero(np.abs(a) > hi))
    elif saturation == "sigmoid":
        sat = float(np.count_nonzero((a < lo) | (a > hi)))
    else:
        sat = -1.0
    ss, total = _np_sums(a)
    return [total * scale, ss * scale, float(np.count_nonzero(a)) * scale,
            sat * scale if sat >= 0 else -1.0, float(n)]
