"""Rank 0's side of a gathered run: the reduced cells, the detail and the mail of the other
ranks, written to its store in the layout of ``store/spread.py``.

Example (inside :class:`~graphviz_autograd.record.gather.Gathered`, rank 0 only):
    >>> zero = RankZero(writer, detail_ranks=(0,))       # doctest: +SKIP
    >>> zero.write(step, version, window, rows, layout, *gathered)     # doctest: +SKIP
"""
from __future__ import annotations

from graphviz_autograd.record.spreads import COLUMNS, Layout, rows_of, scalars_of
from graphviz_autograd.store import RunWriter
from graphviz_autograd.store.schema import SPREADS
from graphviz_autograd.store.spread import rank_kind, rank_scalar, spread_kind, spread_scalar

MAX_NAMED = 64      # ranks listed in a merged incident's values (all are counted)


class RankZero:
    """Writes a gathered run into rank 0's store.

    Args:
        writer: rank 0's RunWriter.
        detail_ranks: ranks whose full statistics are kept at every recorded step; rank 0's
            own rows are written under the plain kinds when it is one of them.
    """

    def __init__(self, writer: RunWriter, detail_ranks: tuple[int, ...]):
        self.writer, self.detail_ranks = writer, detail_ranks
        self.own = 0 in detail_ranks
        self._ids: dict[tuple[int, int], int] = {}      # (rank, its incident id) -> stored id
        self._groups: dict[tuple[int, str], int] = {}   # (step, kind) -> stored id
        self._first: dict[int, int] = {}                # stored id -> the rank that told it first
        self._ranks: dict[int, list[int]] = {}          # stored id -> the ranks that had it
        self._latest: dict[int, dict] = {}              # stored id -> the first rank's latest telling

    def own_step(self, step: int, wall_time: float, version, scalars: dict, stats) -> None:
        """A step of rank 0 alone: unrecorded (its scalars; an incident's rows), or after gathering
        broke, or a log() of rank 0 only (evaluation metrics)."""
        self.writer.add_step(step, wall_time=wall_time, graph_version=version, scalars=scalars,
                             stats=stats)

    def incident(self, rank: int, item: dict) -> None:
        """An incident of ``rank``, stored with the rank in its summary and values. The same kind
        at the same step on several ranks (a loss spike every DDP rank sees) is one incident
        naming them all, told as the first rank that reported it tells it."""
        key = (rank, int(item["id"]))
        stored = self._ids.get(key)
        if stored is None:
            group = (int(item["step"]), str(item["kind"]))
            stored = self._groups.get(group)
            if stored is None:
                stored = self._groups[group] = len(self._groups) + 1
                self._first[stored] = rank
            self._ids[key] = stored
            self._ranks.setdefault(stored, []).append(rank)
        first = self._first[stored]
        if rank == first:
            self._latest[stored] = item
        item, ranks = self._latest[stored], sorted(self._ranks[stored])
        data = dict(item.get("data") or {})
        values = {**(data.get("values") or {}), "rank": first}
        if len(ranks) > 1:
            values.update(ranks=ranks[:MAX_NAMED], n_ranks=len(ranks))
        data["values"] = values
        self.writer.add_incident(stored, int(item["step"]), str(item["kind"]),
                                 f"{who(ranks)}: {item['summary']}", data)

    def write(self, step: int | None, version, window: list, own_stats: dict | None, layout: Layout,
              reduced, tested: list[int], flags: list, details: dict[int, list],
              mail: list[tuple[int, dict]]) -> None:
        """Everything one gather brought; ``step`` None: the last window, at close."""
        w = self.writer
        for src, item in mail:          # earlier steps first: per key, steps must increase
            if item.get("type") == "incident":
                self.incident(src, item)
            elif item.get("type") == "rows":
                w.add_late(int(item["step"]), stats={
                    rank_kind(kind, src): [(key, tuple(values)) for key, values in entries]
                    for kind, entries in item["stats"].items() if kind in COLUMNS})
        count, mean, lo, hi, lo_rank, hi_rank = (t.tolist() for t in (
            reduced.count, reduced.mean, reduced.min, reduced.max, reduced.min_rank, reduced.max_rank))
        columns = dict(zip(SPREADS, (lo, mean, hi, lo_rank, hi_rank)))
        final = self._window_scalars(step, window, layout, count, columns, details)
        flagged = self._flags(step, flags)
        if step is None:
            self._outliers(flagged, step, layout, count, hi_rank, details)
            return
        out = dict(own_stats) if own_stats and (self.own or 0 in flagged_ranks(flagged, step)) else {}
        n = layout.n_cells
        for name, column in columns.items():
            cells = [v if c > 0 else None for v, c in zip(column[:n], count[:n])]
            for kind, entries in rows_of(layout, cells).items():
                out[spread_kind(kind, name)] = entries
        for r, cells in details.items():
            for kind, entries in rows_of(layout, cells[:n]).items():
                out[rank_kind(kind, r)] = entries
        w.add_step(step, wall_time=window[-1][1], graph_version=version, scalars=final, stats=out)
        self._outliers(flagged, step, layout, count, hi_rank, details)

    def _window_scalars(self, step, window: list, layout: Layout, count: list, columns: dict,
                        details: dict) -> dict:
        """Spreads (and detail ranks' values) of the scalars at each step of the window; those
        of earlier steps are added late, the recorded step's returned with its own scalars."""
        n_win, base = len(window), layout.n_cells
        final: dict = {}
        for p, (s, _wall, own) in enumerate(window):
            extra = {}
            for i, name in enumerate(layout.names):
                c = base + i * n_win + p
                if count[c] > 0:
                    for spread, column in columns.items():
                        extra[spread_scalar(name, spread)] = column[c]
            for r, cells in details.items():
                for name, v in scalars_of(layout, cells, n_win, p).items():
                    extra[rank_scalar(name, r)] = v
            if step is not None and p == n_win - 1:
                final = {**own, **extra}
            elif extra:
                self.writer.add_late(s, scalars=extra)
        return final

    @staticmethod
    def _flags(step, flags: list) -> dict[tuple[int, int], list]:
        out: dict[tuple[int, int], list] = {}
        for f in flags:
            out.setdefault((f.step, f.rank), []).append(f)
        return out

    def _outliers(self, flagged: dict, step, layout: Layout, count: list, hi_rank: list,
                  details: dict) -> None:
        params = [layout.offsets[k] for k in layout.keys if k[0] == "param"]
        for (s, rank), fs in sorted(flagged.items()):
            values: dict = {}
            for f in fs:
                values[f.quantity] = f.value
                values[f"{f.quantity}_others_mean"] = f.others_mean
            why = "; ".join(f.why for f in fs)
            detail = s == step and (rank in details or (rank == 0 and step is not None))
            if s == step and params:
                held = sum(1 for c in params if count[c] > 0 and hi_rank[c] == rank)
                values["largest_grad_norms"] = held
                if held:
                    why += f"; it holds the largest gradient norm of {held} of {len(params)} parameters"
            self.writer.add_outlier(s, rank, why, {"values": values, "detail": detail})


def who(ranks: list[int]) -> str:
    """``"rank 2"``, ``"ranks 0, 1, 3"``, ``"ranks 0, 1, 2, ... (1024 ranks)"``."""
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    shown = ", ".join(map(str, ranks[:8]))
    return f"ranks {shown}" if len(ranks) <= 8 else f"ranks {shown}, ... ({len(ranks)} ranks)"


def flagged_ranks(flagged: dict, step) -> set[int]:
    """Ranks flagged at ``step``."""
    return {rank for (s, rank) in flagged if s == step}
