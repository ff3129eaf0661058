"""Outlier ranks from a gathered step's reduced cells (plain Python; the same on every rank).

Only the extremes can be outliers, and the reduced cells name them: the rank holding the
maximum and the one holding the minimum of the loss (at each logged step) and of the global
gradient norm. Each is tested against the *other* ranks, whose mean and standard deviation
come from the sums without it (leave-one-out, in ``sign(x) * log1p(|x|)`` so a value 10^4 times
the others does not swamp their spread). Flagged: beyond ``k`` standard deviations of the
others *and* ``ratio`` times their mean (or below it divided by ``ratio``); or non-finite where
every other rank is finite. No value per rank is exchanged, so the cost does not grow with the
world size; at most one rank per side, quantity and step is flagged (the most extreme).

Example:
    >>> cell = Cell("loss", 7, n=4, mean=(2.0 + 2.1 + 1.9 + 90.0) / 4, t_sum=0.0, t_sq=0.0,
    ...             lo=1.9, lo_rank=2, hi=90.0, hi_rank=3)
    >>> cell = with_log_sums(cell, [2.0, 2.1, 1.9, 90.0])
    >>> [(f.rank, f.step) for f in flag(cell, k=6.0, ratio=1.5)]
    [(3, 7)]
"""
from __future__ import annotations

import math
from typing import NamedTuple


class Cell(NamedTuple):
    """One tested value over the ranks: its count, mean, the log sums and the extremes."""

    quantity: str       # "loss" or "grad_norm"
    step: int
    n: int
    mean: float
    t_sum: float
    t_sq: float
    lo: float
    lo_rank: int
    hi: float
    hi_rank: int


class Flag(NamedTuple):
    step: int
    rank: int
    quantity: str
    why: str
    value: float
    others_mean: float | None


_NAMES = {"loss": "loss", "grad_norm": "global gradient norm"}


def signed_log(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


def with_log_sums(cell: Cell, values: list[float]) -> Cell:
    """``cell`` with the log sums of ``values`` (tests and examples)."""
    t = [signed_log(v) for v in values]
    return cell._replace(t_sum=sum(t), t_sq=sum(x * x for x in t))


def flag(cell: Cell, *, k: float, ratio: float) -> list[Flag]:
    """The extreme ranks of ``cell`` that are outliers, with why."""
    n, name = cell.n, _NAMES.get(cell.quantity, cell.quantity)
    if n < 2:
        return []
    hi_ok, lo_ok = math.isfinite(cell.hi), math.isfinite(cell.lo)
    if hi_ok != lo_ok:      # one side non-finite, the other ranks' finite
        x, rank, other = (cell.lo, cell.lo_rank, cell.hi) if hi_ok else (cell.hi, cell.hi_rank, cell.lo)
        side = "largest" if hi_ok else "smallest"
        return [Flag(cell.step, rank, cell.quantity,
                     f"{name} {x} at step {cell.step} where the other ranks' are finite (the {side} "
                     f"{other:.4g})", x, None)]
    if not (hi_ok and lo_ok) or n < 3 or cell.hi_rank == cell.lo_rank:
        return []
    out = []
    total = cell.mean * n
    for x, rank, sign in ((cell.hi, cell.hi_rank, 1.0), (cell.lo, cell.lo_rank, -1.0)):
        tx = signed_log(x)
        m_t = (cell.t_sum - tx) / (n - 1)
        sd = math.sqrt(max((cell.t_sq - tx * tx) / (n - 1) - m_t * m_t, 0.0))
        others = (total - x) / (n - 1)
        dev = sign * (tx - m_t)
        if dev > k * sd and dev > 0 and abs(x - others) > (1 - 1 / ratio) * max(abs(x), abs(others)):
            where = "above" if sign > 0 else "below"
            times = f"; {x / others:.3g}x" if others > 0 and x > 0 else ""
            out.append(Flag(cell.step, rank, cell.quantity,
                            f"{name} {x:.4g} at step {cell.step} is far {where} the other {n - 1} "
                            f"ranks (mean {others:.4g}{times})", x, others))
    return out
