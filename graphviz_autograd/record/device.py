"""Statistics of tensors on an accelerator (CUDA, MPS, XPU, ...), computed where they live.

Reading a number of a device tensor on the host waits for the device to finish everything
queued before it (a *synchronisation*). A recorded step here makes exactly one: every
statistic is reduced on the device into small tensors (no ``.item()``, no ``float(t)``, no
data-dependent branch: NaN and Inf are always counted), and :func:`read` copies them all to
the host at once, one explicit ``.to("cpu", copy=True)`` per device.

- Gradients reduced while autograd runs (node gradients, in backward pre-hooks) are reduced at
  once, tensor by tensor: a pending gradient may share memory with ``param.grad``, which
  gradient accumulation, clipping or ``GradScaler.unscale_`` change in place later.
- Gradients handed over outside backward (parameter gradients at ``log()``) wait in a queue
  and are reduced together by :func:`flush`: ``torch._foreach_norm`` gives the L2 and L-inf
  norms of a whole list in a few kernels; sums and counts take one reduction per tensor.
- Activations are reduced at once (a later in-place op, e.g. ``ReLU(inplace=True)``, would
  change them).

Every dtype accumulates in float64 (float32 on MPS, which has no float64): the reductions
are bound by memory, not arithmetic, and bfloat16's squares span float32's range twice.

:data:`FORCE` (see ``stats.force_device_path``) sends CPU tensors down this path too, so
tests can count its host synchronisations on a machine without a GPU.

Example:
    >>> import torch
    >>> row = grad_row(torch.tensor([3.0, 0.0, -4.0]))
    >>> read([row])[0][:4]          # sum of squares, sum, |max|, non-zeros
    [25.0, -1.0, 4.0, 2.0]
"""
from __future__ import annotations

import contextlib
import math
import threading
import weakref

import torch

FORCE = False       # also take this path for CPU tensors (stats.force_device_path)
MAX_QUEUED = 1024   # deferred gradients reduced together at most
GRAD, ACT, SQ = 0, 1, 2    # a row's kind: 6, 4 (3 without saturation) or 1 numbers on the device

_lock = threading.Lock()
_queue: list = []   # weak references to deferred gradient rows
_fills: list = []   # (list, index, row): list[index] = the row's value at the next read


class Row:
    """Statistics of one tensor, pending on its device until :func:`read`.

    ``values`` is a 1-d tensor on the device (shared by a batch); this row's numbers are
    ``values[at + k * stride]``. ``sat`` says whether an activation's
    saturated count applies; ``tensor`` is held only while the row waits in the queue.
    """

    __slots__ = ("kind", "n", "sat", "values", "at", "stride", "tensor", "__weakref__")

    def __init__(self, kind: int, n: int, sat: bool = False):
        self.kind, self.n, self.sat = kind, n, sat
        self.values, self.at, self.stride, self.tensor = None, 0, 1, None

    def decode(self, v: list, base: int):
        """This row in the host form of ``stats``: a gradient row, an activation row or
        a squared norm (None when the reduction failed)."""
        if self.values is None:
            return None
        at, st = base + self.at, self.stride
        if self.kind == SQ:
            return v[at] * v[at]
        if self.kind == ACT:
            norm = v[at + st]
            sat = v[at + 3 * st] if self.sat else -1.0
            return [v[at], norm * norm, v[at + 2 * st], sat, float(self.n)]
        norm, s, amax, nz, nonfinite, nan = (v[at + k * st] for k in range(6))
        return [norm * norm, s, math.nan if nan else amax, nz, nan, nonfinite - nan, float(self.n)]


def wanted(t: torch.Tensor) -> bool:
    """Whether ``t``'s statistics are computed on its device (it is not on the CPU, or FORCE)."""
    return FORCE or not t.is_cpu


def _acc(device: torch.device) -> torch.dtype:
    """Accumulation and result dtype of reductions on ``device``."""
    return torch.float32 if device.type == "mps" else torch.float64


def _prepare(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.layout is not torch.strided:     # (a sparse gradient's coalesce() may synchronise)
        t = t.coalesce().values() if t.is_sparse else t.to_dense()
    if t.is_complex():
        t = t.abs()
    if not t.is_floating_point():
        t = t.float()
    return t


def _no_autocast(device_type: str):
    """Autocast off for ``device_type`` while reducing (it would copy inputs to float32)."""
    try:
        on = torch.is_autocast_enabled(device_type)
    except RuntimeError:            # a device type autocast does not know
        on = False
    return torch.autocast(device_type, enabled=False) if on else contextlib.nullcontext()


# -- reductions (device ops only: nothing here waits for the device) ----------------------
def _reduce_one(t: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """[L2 norm, sum, |max|, non-zeros, non-finite, NaN] of one tensor."""
    norm = torch.linalg.vector_norm
    return torch.stack([norm(t, 2, dtype=acc), t.sum(dtype=acc), norm(t, math.inf, dtype=acc),
                        norm(t, 0, dtype=acc), norm(t * 0, 0, dtype=acc),
                        torch.isnan(t).sum(dtype=acc)])


def _reduce_many(ts: list[torch.Tensor], acc: torch.dtype) -> torch.Tensor:
    """The same numbers for a list of tensors of one dtype and device, as one tensor of
    ``6 * len(ts)`` values: every L2 norm, then every sum, ... (column-major)."""
    foreach_norm = torch._foreach_norm
    zeroed = torch._foreach_mul(ts, 0.0)        # 0 where finite, NaN at +-Inf and NaN
    nonfinite = foreach_norm(zeroed, 0, dtype=acc)
    del zeroed
    angles = torch._foreach_atan(ts)            # atan(+-Inf) = +-pi/2: only NaN stays NaN
    torch._foreach_mul_(angles, 0.0)
    nan = foreach_norm(angles, 0, dtype=acc)
    del angles
    return torch.stack([*foreach_norm(ts, 2, dtype=acc), *(t.sum(dtype=acc) for t in ts),
                        *foreach_norm(ts, math.inf, dtype=acc), *foreach_norm(ts, 0, dtype=acc),
                        *nonfinite, *nan])


def thresholds(dtype: torch.dtype) -> tuple[float, float]:
    """``(hi, lo)``: in ``dtype``, ``|y| > hi`` and ``y < lo`` hold exactly when the exact
    value has |y| > 0.99 and y < 0.01 (hi: the largest ``dtype`` value <= 0.99, lo: the
    smallest >= 0.01), as the C extension compares. A plain ``y > 0.99`` would compare with
    0.99 rounded to ``dtype`` (float16: 0.990234375, itself not saturated)."""
    cached = _THRESHOLDS.get(dtype)
    if cached is None:
        eps = torch.finfo(dtype).eps if dtype.is_floating_point else 2.0 ** -52

        def step(x):                # spacing of dtype's values around x
            return math.ldexp(eps, math.frexp(x)[1] - 1)
        cached = _THRESHOLDS[dtype] = (math.floor(0.99 / step(0.99)) * step(0.99),
                                       math.ceil(0.01 / step(0.01)) * step(0.01))
    return cached


_THRESHOLDS: dict = {}


def saturated(t: torch.Tensor, saturation: str, dtype: torch.dtype) -> torch.Tensor:
    """Count of saturated elements of ``t`` as a 0-d ``dtype`` tensor (tanh: |y| > 0.99,
    sigmoid: y < 0.01 or y > 0.99)."""
    hi, lo = thresholds(t.dtype)
    if saturation == "tanh":
        return (t.abs() > hi).sum(dtype=dtype)
    return ((t < lo) | (t > hi)).sum(dtype=dtype)


# -- rows ------------------------------------------------------------------------------------
def grad_row(t: torch.Tensor) -> Row | None:
    """A pending gradient row of a plain tensor (None if empty). Inside backward it is reduced
    now; outside (e.g. parameter gradients at ``log()``) it waits for :func:`flush`."""
    n = t.numel()
    if not n:
        return None
    row = Row(GRAD, n)
    if torch._C._current_graph_task_id() != -1:      # autograd is running: reduce now
        t = _prepare(t)
        row.n = t.numel()               # (a sparse tensor: its stored values)
        with torch.no_grad(), _no_autocast(t.device.type):
            row.values = _reduce_one(t, _acc(t.device))
        return row
    row.tensor = t
    with _lock:
        _queue.append(weakref.ref(row))
        full = len(_queue) >= MAX_QUEUED
    if full:
        flush()
    return row


def act_row(t: torch.Tensor, saturation: str | None) -> Row | None:
    """A pending activation row: sum, L2 norm, non-zeros, saturated count, reduced now."""
    if not t.numel():
        return None
    t = _prepare(t)
    acc = _acc(t.device)
    with torch.no_grad(), _no_autocast(t.device.type):
        parts = [t.sum(dtype=acc), torch.linalg.vector_norm(t, 2, dtype=acc),
                 torch.linalg.vector_norm(t, 0, dtype=acc)]
        if saturation is not None:
            parts.append(saturated(t, saturation, acc))
        row = Row(ACT, t.numel(), saturation is not None)
        row.values = torch.stack(parts)
    return row


def sq_rows(tensors: list[torch.Tensor]) -> list[Row | None]:
    """Pending squared L2 norms of many tensors, one ``_foreach_norm`` per dtype and device."""
    rows: list[Row | None] = [None] * len(tensors)
    groups: dict = {}
    for i, t in enumerate(tensors):
        t = _prepare(t)
        groups.setdefault((t.device, t.dtype), []).append((i, t))
    with torch.no_grad():
        for (dev, _), members in groups.items():
            ts = [t for _, t in members]
            values = torch.stack(torch._foreach_norm(ts, 2, dtype=_acc(dev)))
            for k, (i, t) in enumerate(members):
                row = rows[i] = Row(SQ, t.numel())      # (n unused: a norm)
                row.values, row.at = values, k
    return rows


def fill_later(target: list, index: int, row: Row | None) -> None:
    """Set ``target[index]`` to ``row``'s value at the next :func:`read` (the list keeps a
    placeholder until then), so values needed after it join the same transfer."""
    if row is not None:
        with _lock:
            _fills.append((target, index, row))


def flush() -> None:
    """Reduce every queued gradient: one batch per dtype and device (device ops only)."""
    with _lock:
        rows = [r for r in (ref() for ref in _queue) if r is not None and r.tensor is not None]
        _queue.clear()
    groups: dict = {}
    for row in rows:
        t, row.tensor = row.tensor, None
        try:
            t = _prepare(t)
        except Exception:  # noqa: BLE001 - a tensor this cannot read: no statistic, no error
            continue
        row.n = t.numel()
        groups.setdefault((t.device, t.dtype), []).append((row, t))
    for (dev, _), members in groups.items():
        ts = [t for _, t in members]
        try:
            with torch.no_grad(), _no_autocast(dev.type):
                values = _reduce_many(ts, _acc(dev))
        except Exception:  # noqa: BLE001 - e.g. an op the backend lacks: no statistic for these
            continue
        for k, (row, _) in enumerate(members):
            row.values, row.at, row.stride = values, k, len(members)


def read(items: list) -> list:
    """Host values of ``items`` (:class:`Row` objects or 1-d tensors of the torch path), and
    of every pending :func:`fill_later`, with one copy to the host per device."""
    if not items and not _queue and not _fills:        # a CPU step: nothing pending
        return []
    flush()
    with _lock:
        fills = list(_fills)
        _fills.clear()
    everything = list(items) + [row for _, _, row in fills]
    by_device: dict = {}        # device -> ({id(tensor): tensor} in order, whether a Row's)
    for item in everything:
        is_row = isinstance(item, Row)
        t = item.values if is_row else item
        if t is not None:
            tensors, has_row = by_device.get(t.device, ({}, False))
            tensors[id(t)] = t
            by_device[t.device] = (tensors, has_row or is_row)
    base: dict[int, int] = {}
    host: dict = {}
    for dev, (tensors, has_row) in by_device.items():
        flat = torch.cat([t.reshape(-1) for t in tensors.values()])
        if dev.type == "cpu" and not has_row:
            values = flat.tolist()              # the torch path's CPU rows: already host memory
        else:
            values = flat.to("cpu", copy=True).tolist()     # the one read-back of this device
        k = 0
        for key, t in tensors.items():
            base[key], host[key] = k, values
            k += t.numel()
    out = []
    for item in everything:
        t = item.values if isinstance(item, Row) else item
        if t is None:
            out.append(None)
            continue
        values, b = host[id(t)], base[id(t)]
        out.append(item.decode(values, b) if isinstance(item, Row) else values[b:b + t.numel()])
    for (target, index, _), value in zip(fills, out[len(items):]):
        target[index] = value
    return out[:len(items)]
