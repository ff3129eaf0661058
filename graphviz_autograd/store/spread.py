"""Ranks compared in one store: what ``Recorder(ranks="gather")`` writes, and reading it (no torch).

A gathered run has one store, rank 0's. Beside rank 0's own rows it holds, per recorded
step and for every parameter, node and module statistic, the minimum, mean and maximum over
the ranks and the ranks holding the minimum and the maximum, as the key kinds
``"param@min"``, ``"param@mean"``, ``"param@max"``, ``"param@min_rank"``, ``"param@max_rank"``
(same for ``node`` and ``module``); every logged scalar the same way, as the scalars
``"loss@min"``, ... . One rank's full detail (a ``detail_ranks`` rank, or an outlier) is
kept under ``"param@rank3"`` and ``"loss@rank3"``; the ranks flagged as outliers, with why,
in the table ``outliers``.

Example:
    >>> run = open_run("runs/ddp")                          # doctest: +SKIP
    >>> s = run.rank_spread("fc1.weight", "grad_norm")       # doctest: +SKIP
    >>> s.steps[:2], s.max[:2], s.max_rank[:2]              # doctest: +SKIP
    ([0, 50], [0.91, 0.43], [3, 1])
    >>> [(o.rank, o.why) for o in run.outliers(50)]          # doctest: +SKIP
    [(3, 'loss 2.1e+04 is 9.1e+03x the mean of the other 3 ranks (2.31)')]
"""
from __future__ import annotations

import json
from typing import NamedTuple

from graphviz_autograd.errors import StoreError
from graphviz_autograd.store.schema import KINDS, SPREADS, Series, check_kind, check_stat

SCALAR = "scalar"


class Spread(NamedTuple):
    """One statistic over the ranks, by recorded step: ``min``, ``mean``, ``max`` of the ranks'
    values and the rank holding the minimum and the maximum (the lowest such rank on a tie)."""

    steps: list[int]
    min: list[float]
    mean: list[float]
    max: list[float]
    min_rank: list[int]
    max_rank: list[int]


class Outlier(NamedTuple):
    """A rank whose loss or gradient norm was far from the other ranks' at one step.

    ``values`` holds the numbers (``quantity``, ``value``, ``others_mean``, ``ranks``);
    ``detail`` says whether the rank's full statistics of that step are stored
    (``run.rank_stats_at(step, rank)``); at steps between recorded ones only its scalars are.
    """

    step: int
    rank: int
    why: str
    values: dict
    detail: bool


def spread_kind(kind: str, spread: str) -> str:
    """Key kind of a spread statistic: ``spread_kind("param", "max") == "param@max"``."""
    return f"{kind}@{spread}"


def rank_kind(kind: str, rank: int) -> str:
    """Key kind of one rank's detail in a gathered run: ``"param@rank3"``."""
    return f"{kind}@rank{rank}"


def spread_scalar(name: str, spread: str) -> str:
    """Scalar name of a spread: ``"loss@max"``."""
    return f"{name}@{spread}"


def rank_scalar(name: str, rank: int) -> str:
    """Scalar name of one rank's value: ``"loss@rank3"``."""
    return f"{name}@rank{rank}"


def is_derived_scalar(name: str) -> bool:
    """Whether ``name`` is a spread or one rank's value of a scalar (``loss@max``, ``loss@rank3``)."""
    _base, at, suffix = name.rpartition("@")
    return bool(at) and (suffix in SPREADS or (suffix[:4] == "rank" and suffix[4:].isdigit()))


def is_gathered(meta: dict) -> bool:
    """Whether a store's meta says it was written by ``Recorder(ranks="gather")``."""
    return meta.get("ranks") == "gather"


def rank_spread(reader, key: str, stat: str | None = None, kind: str = "param") -> Spread:
    """The spread of ``stat`` of ``key`` over the ranks, by recorded step.

    Args:
        reader: the store of a gathered run (a :class:`~graphviz_autograd.store.RankReader`).
        key: a parameter name, node id or module path; for ``kind="scalar"`` a scalar name.
        stat: one of ``STATS`` (default ``"grad_norm"``); None for scalars.
        kind: ``"param"``, ``"node"``, ``"module"`` or ``"scalar"``.

    Raises:
        StoreError: an unknown kind or stat, a stat given for a scalar, or a store that was
            not gathered.
    """
    if not is_gathered(reader.meta):
        raise StoreError(f"{reader.file} holds one rank's records, not a gathered run; read "
                         "rank_spread() from the Run (open_run(run_dir)), which computes it from "
                         "the ranks' stores")
    if kind == SCALAR:
        if stat is not None:
            raise StoreError(f"rank_spread({key!r}, {stat!r}, kind='scalar'): scalars have no stat; "
                             "leave stat out")
        parts = [reader.series(spread_scalar(key, s)) for s in SPREADS]
    else:
        stat = check_stat("grad_norm" if stat is None else stat)
        if check_kind(kind) not in KINDS:
            raise StoreError(f"kind={kind!r}: choose one of {', '.join(KINDS)} or 'scalar'")
        parts = [reader._stat_series(spread_kind(kind, s), key, stat) for s in SPREADS]
    return _aligned(parts)


def _aligned(parts: list[Series]) -> Spread:
    """The five series on the steps of the mean (they are written together)."""
    steps = parts[1].steps
    columns = []
    for i, part in enumerate(parts):
        by_step = dict(zip(part.steps, part.values))
        values = [by_step.get(s) for s in steps]
        if i >= 3:
            values = [None if v is None else int(v) for v in values]
        columns.append(values)
    return Spread(list(steps), *columns)


def spread_from_ranks(readers: dict, key: str, stat: str | None = None, kind: str = "param") -> Spread:
    """The same spread computed from one store per rank (a run recorded with ``ranks="each"``)."""
    by_step: dict[int, list[tuple[float, int]]] = {}
    for rank, reader in readers.items():
        if kind == SCALAR:
            if stat is not None:
                raise StoreError(f"rank_spread({key!r}, {stat!r}, kind='scalar'): scalars have no "
                                 "stat; leave stat out")
            series = reader.series(key)
        else:
            series = reader._stat_series(check_kind(kind), key, check_stat(stat or "grad_norm"))
        for step, value in zip(*series):
            by_step.setdefault(step, []).append((value, rank))
    out = Spread([], [], [], [], [], [])
    for step in sorted(by_step):
        pairs = by_step[step]
        lo = min(pairs, key=lambda p: (_order(p[0]), p[1]))
        hi = min(pairs, key=lambda p: (-_order(p[0]), p[1]))
        out.steps.append(step)
        out.min.append(lo[0])
        out.mean.append(sum(v for v, _ in pairs) / len(pairs))
        out.max.append(hi[0])
        out.min_rank.append(lo[1])
        out.max_rank.append(hi[1])
    return out


def _order(value: float) -> float:
    """Sort key with NaN above +inf (as the gathered maximum counts it)."""
    return float("inf") if value != value else value


def outliers(reader, step: int | None = None) -> list[Outlier]:
    """The ranks flagged as outliers at ``step`` (every step when None), by step and rank;
    [] for a store without the table (one written before gathering existed)."""
    if reader._fetch("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outliers'") == []:
        return []
    if step is None:
        rows = reader._fetch("SELECT step, rank, why, data FROM outliers ORDER BY step, rank")
    else:
        rows = reader._fetch("SELECT step, rank, why, data FROM outliers WHERE step = ? ORDER BY rank",
                             (int(step),))
    out = []
    for s, rank, why, text in rows:
        try:
            data = json.loads(text) if text else {}
        except ValueError as exc:
            raise StoreError(f"{reader.file}: outlier rank {rank} at step {s} is damaged ({exc})") from exc
        out.append(Outlier(int(s), int(rank), str(why), dict(data.get("values") or {}),
                           bool(data.get("detail"))))
    return out


def rank_stats_at(reader, step: int, rank: int, kind: str = "param",
                  stats: tuple[str, ...] = ("grad_norm",)) -> dict[str, dict[str, float]]:
    """``{stat: {key: value}}`` of one rank at ``step``: rank 0's own rows, or the detail kept
    for another rank (empty where none was kept)."""
    if check_kind(kind) not in KINDS:
        raise StoreError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")
    own = int(reader.meta.get("rank", 0))
    return reader.stats_table_at(step, kind if rank == own else rank_kind(kind, rank), stats)
