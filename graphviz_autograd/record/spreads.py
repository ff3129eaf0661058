"""A gathered step as two flat tensors: one SUM and one MAX all-reduce give every rank the
minimum, mean and maximum of each value over the ranks and the ranks holding the extremes.

Each rank lays its values out in the agreed :class:`Layout` (keys x their statistic columns,
then each scalar at each step of the window, then the global gradient norm): a *cell* per
value, missing values marked. The SUM tensor carries per cell the value and a count of ranks
that had one (so the mean), and for the cells outliers are looked for (``loss``, the gradient
norm) the sum and sum of squares of ``sign(x) * log1p(|x|)``. The MAX tensor carries per cell
two int64 keys whose maximum is the maximum (and, negated, the minimum): the value's float64
bits in an order-preserving integer, truncated toward zero to a multiple of ``2**b`` with the
rank in the low ``b`` bits (``b = bit_length(world - 1)``). So min and max keep ``52 - b``
bits of mantissa (4 ranks: 9e-16 relative, 1,024 ranks: 2e-13) and a tie goes to the lowest
rank. NaN counts as the largest value (a rank with a NaN gradient norm is the maximum).

Bytes per rank and recorded step: ``32 * cells + 16 * tested cells + 72``, whatever the
world size (``benchmarks/bench_gather.py``).

Example:
    >>> layout = Layout()
    >>> layout.extend([("param", "w")], ["loss"])
    >>> values = local_values(layout, {"param": [("w", (1.0,) * 13)]}, [(0, {"loss": 2.0})])
    >>> packed = pack(values, layout.tested(1), rank=0, bits=1, header_max=[0] * 8, header_sum=[0])
    >>> decode(packed.sums, packed.maxes, len(values), 1).mean[:2].tolist()
    [1.0, 1.0]
"""
from __future__ import annotations

import hashlib
import json
import struct
from array import array
from typing import NamedTuple

import torch

from graphviz_autograd.record.rows import ROW_STATS
from graphviz_autograd.store.chunks import MISSING

MISSING_BITS = struct.unpack("<q", MISSING)[0]
MISSING_FLOAT = struct.unpack("<d", MISSING)[0]
# Statistic columns (indices into ROW_STATS, the store's order) each kind's rows can hold.
_GRAD, _PARAM, _ACT = tuple(range(7)), (7, 8), tuple(range(9, len(ROW_STATS)))
COLUMNS = {"param": _GRAD + _PARAM, "node": _GRAD + _ACT, "module": _ACT}
INT64_MIN = -(2 ** 63)
_SIGN = INT64_MIN                       # the float64 sign bit, as int64
_NAN_M = 0x7FF8_0000_0000_0000          # canonical NaN bits: above +inf in the order
N_HEADER_MAX = 8    # uncovered, window, -window, digest, -digest, want detail, last step, -last step
N_HEADER_SUM = 1    # ranks with mail


class Layout:
    """The agreed order of the cells: keys ``(kind, name)`` with their columns, then scalar
    names (each at every step of the window), then the global gradient norm. Every rank holds
    the same one; it only grows by :meth:`extend` with names every rank received."""

    def __init__(self):
        self.keys: list[tuple[str, str]] = []
        self.offsets: dict[tuple[str, str], int] = {}
        self.names: list[str] = []
        self.name_index: dict[str, int] = {}
        self.n_cells = 0

    def extend(self, keys, names) -> None:
        for kind, name in keys:
            if (kind, name) not in self.offsets and kind in COLUMNS:
                self.offsets[(kind, name)] = self.n_cells
                self.keys.append((kind, name))
                self.n_cells += len(COLUMNS[kind])
        for name in names:
            if name not in self.name_index:
                self.name_index[name] = len(self.names)
                self.names.append(name)

    def missing(self, rows: dict | None, window: list) -> tuple[list, list]:
        """Keys and scalar names this rank has that the layout lacks."""
        offsets, index = self.offsets, self.name_index
        keys = [(kind, name) for kind, entries in (rows or {}).items() if kind in COLUMNS
                for name, _ in entries if (kind, name) not in offsets]
        names = list(dict.fromkeys(n for _, scalars in window for n in scalars if n not in index))
        return keys, names

    def size(self, window: int) -> int:
        """Number of cells for a window of ``window`` logged steps."""
        return self.n_cells + len(self.names) * window + 1

    def tested(self, window: int) -> list[int]:
        """Cells outliers are looked for in: ``loss`` at each step of the window, the gradient norm."""
        out = []
        i = self.name_index.get("loss")
        if i is not None:
            first = self.n_cells + i * window
            out.extend(range(first, first + window))
        out.append(self.size(window) - 1)
        return out

    def digest(self) -> int:
        """62 bits identifying the layout (the same on every rank, or a bug shows)."""
        text = json.dumps([self.keys, self.names]).encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 2

    def pruned(self, alive_keys: list[bool], alive_names: list[bool]) -> "Layout":
        out = Layout()
        out.extend([k for k, alive in zip(self.keys, alive_keys) if alive],
                    [n for n, alive in zip(self.names, alive_names) if alive])
        return out


def local_values(layout: Layout, rows: dict | None, window: list) -> array:
    """This rank's values in ``layout`` order (:data:`MISSING_FLOAT` where it has none).

    Args:
        rows: the recorded step's statistics ``{kind: [(key, values in STATS order)]}``.
        window: ``(step, {name: value})`` of every training log since the last recorded one,
            this one last.
    """
    n_win = len(window)
    values = array("d", [MISSING_FLOAT]) * layout.size(n_win)
    offsets = layout.offsets
    norms = []
    for kind, entries in (rows or {}).items():
        columns = COLUMNS.get(kind)
        if columns is None:
            continue
        for key, row in entries:
            first = offsets.get((kind, key))
            if first is None:
                continue
            for j, c in enumerate(columns):
                x = row[c]
                if x is not None:
                    values[first + j] = x
            if kind == "param" and row[0] is not None:
                norms.append(row[0])
    base, index = layout.n_cells, layout.name_index
    for p, (_step, scalars) in enumerate(window):
        for name, x in scalars.items():
            i = index.get(name)
            if i is not None and x is not None:
                values[base + i * n_win + p] = x
    if norms:
        values[-1] = sum(n * n for n in norms) ** 0.5
    return values


class Packed(NamedTuple):
    sums: torch.Tensor      # float64: values, counts, tested t, tested t^2, header
    maxes: torch.Tensor     # int64: max keys, min keys, header


def _tensor(values: array) -> torch.Tensor:
    return torch.frombuffer(bytearray(values.tobytes()), dtype=torch.float64)


def signed_log(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * log1p(|x|)``: ratios for large values, differences near zero."""
    return torch.copysign(torch.log1p(x.abs()), x)


def pack(values: array, tested: list[int], *, rank: int, bits: int, header_max: list[int],
         header_sum: list[float]) -> Packed:
    """The SUM and MAX tensors of this rank's ``values`` (see the module docstring)."""
    x = _tensor(values)
    raw = x.view(torch.int64)
    present = raw != MISSING_BITS
    zero = torch.zeros((), dtype=torch.float64)
    idx = torch.tensor(tested, dtype=torch.int64)
    t = torch.where(present[idx], signed_log(x[idx]), zero)
    sums = torch.cat([torch.where(present, x, zero), present.to(torch.float64), t, t * t,
                      torch.tensor(header_sum, dtype=torch.float64)])
    mask = (1 << bits) - 1
    nan = x.isnan() & present
    mag = raw & ~_SIGN
    m = torch.where(raw < 0, -mag, mag)
    m = torch.where(nan, torch.full_like(m, _NAN_M), m)
    trunc = torch.where(m < 0, -((-m) & ~mask), m & ~mask)     # toward zero: still in order
    code = mask - rank                                          # the lowest rank wins a tie
    low = torch.full_like(m, INT64_MIN)
    kmax = torch.where(present, trunc + code, low)
    kmin = torch.where(present, torch.where(nan, low + (1 << bits), -trunc) + code, low)
    maxes = torch.cat([kmax, kmin, torch.tensor(header_max, dtype=torch.int64)])
    return Packed(sums, maxes)


class Reduced(NamedTuple):
    """Every cell over the ranks (tensors of the cells' length; ``count`` 0: no rank had one)."""

    count: torch.Tensor
    mean: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor
    min_rank: torch.Tensor
    max_rank: torch.Tensor
    t_sum: torch.Tensor         # over the tested cells
    t_sq: torch.Tensor
    header_max: list[int]
    header_sum: list[float]


def _from_key(t: torch.Tensor) -> torch.Tensor:
    """Float64 values of order-preserving integers."""
    return torch.where(t >= 0, t, (-t) | _SIGN).view(torch.float64)


def decode(sums: torch.Tensor, maxes: torch.Tensor, n: int, n_tested: int, bits: int = 1) -> Reduced:
    """The reduced tensors of ``n`` cells back as values and ranks."""
    mask = (1 << bits) - 1
    total, count = sums[:n], sums[n:2 * n]
    t_sum, t_sq = sums[2 * n:2 * n + n_tested], sums[2 * n + n_tested:2 * n + 2 * n_tested]
    kmax, kmin = maxes[:n], maxes[n:2 * n]
    cmax, cmin = kmax & mask, kmin & mask
    hi = _from_key(kmax - cmax)
    lo_t = kmin - cmin
    lo = torch.where(lo_t == INT64_MIN + (1 << bits), torch.full_like(hi, float("nan")), _from_key(-lo_t))
    mean = total / count.clamp(min=1.0)
    return Reduced(count, mean, lo, hi, mask - cmin, mask - cmax, t_sum, t_sq,
                   maxes[2 * n:].tolist(), sums[2 * n + 2 * n_tested:].tolist())


def values_of(blob: torch.Tensor) -> list:
    """A float64 tensor of cells (a rank's detail) as floats, None where missing."""
    raw = blob.view(torch.int64).tolist()
    vals = blob.tolist()
    return [None if r == MISSING_BITS else v for r, v in zip(raw, vals)]


def _widen(kind: str):
    """Cells of one key -> its 13-value row (the columns it lacks as None), by slicing."""
    if kind == "param":
        tail = (None,) * len(_ACT)
        return lambda part: tuple(part) + tail
    if kind == "node":
        gap, n = (None,) * len(_PARAM), len(_GRAD)
        return lambda part: tuple(part[:n]) + gap + tuple(part[n:])
    head = (None,) * (len(_GRAD) + len(_PARAM))
    return lambda part: head + tuple(part)


_WIDEN = {kind: _widen(kind) for kind in COLUMNS}


def rows_of(layout: Layout, cells: list) -> dict[str, list]:
    """Store rows ``{kind: [(key, 13 values)]}`` from per-cell values (None: missing); keys
    whose cells are all None are left out."""
    out: dict[str, list] = {}
    offsets = layout.offsets
    for kind, key in layout.keys:
        first = offsets[(kind, key)]
        width = len(COLUMNS[kind])
        part = cells[first:first + width]
        if part.count(None) == width:
            continue
        entries = out.get(kind)
        if entries is None:
            entries = out[kind] = []
        entries.append((key, _WIDEN[kind](part)))
    return out


def scalars_of(layout: Layout, cells: list, n_win: int, position: int) -> dict[str, float]:
    """``{name: value}`` at one step of the window from per-cell values."""
    base = layout.n_cells
    out = {}
    for i, name in enumerate(layout.names):
        v = cells[base + i * n_win + position]
        if v is not None:
            out[name] = v
    return out
