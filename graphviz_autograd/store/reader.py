"""Reading one rank's store: :class:`RankReader`, cheap to poll while the writer writes.

SQLite in WAL mode: readers never block the writer and see whole flushes only
(never half a step). Reading one key's series over 100,000 steps reads a few
hundred chunk rows (bench_store.py: ~10 ms). Stores of schema 1 (one row per key
and step) are still read.

Stores on read-only media open too (``connect.py``). A read that fails because
the store's ``-wal`` was deleted under a live writer reopens the store once and
else explains; a damaged store raises :class:`StoreError` naming the file and
what is damaged, from every method, never a ``TypeError`` or ``struct.error``.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator

from graphviz_autograd.errors import GraphvizAutogradError, StoreError
from graphviz_autograd.graph.model import Graph
from graphviz_autograd.graph.serialize import from_json
from graphviz_autograd.store import chunks, spread
from graphviz_autograd.store.connect import SHARED, explain, open_for_reading
from graphviz_autograd.store.schema import (STATS, STORE_GLOB, Closing, Damaged, GraphVersion,
                                            Incident, Series, check_kind, check_stat, check_store,
                                            decode, typed_reads)
from graphviz_autograd.store.wal import side_identity

SIDE_CHECK_S = 1.0     # how often a reader looks whether the store's -wal/-shm were replaced


class RankReader(Closing):
    """Read-only view of one rank's store, cheap to poll while the writer writes.

    The connection stays open; each public method sees one consistent snapshot.
    Methods may be called from several threads (they are serialized). :attr:`mode`
    says how the store was opened: ``'shared'`` (beside its writer), ``'immutable'``
    or ``'copy'`` (on read-only media, see ``connect.py``).

    Raises:
        StoreError: The file is not a run store or is damaged (SchemaVersionError: a newer
            one); every method raises it for a damaged store too.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.file = self.path = Path(path)
        self._lock = threading.RLock()
        self._depth = 0                 # > 0 inside a snapshot (no reopening there)
        self._copy_dir: str | None = None
        self._conn = self._open()
        try:
            self.meta: dict[str, Any] = check_store(self._conn, self.file)
        except StoreError:
            self.close()
            raise
        self.rank: int = int(self.meta.get("rank", 0))
        self._chunked = int(self.meta.get("schema_version", 1)) >= 2
        self._graph_json: dict[int, str] = {}
        self._graphs: dict[int, Any] = {}
        self._key_ids: dict[tuple[str, str], int] = {}
        self._max_key_id = 0

    def _open(self) -> sqlite3.Connection:
        try:
            opened = open_for_reading(self.file)
        except sqlite3.Error as exc:
            raise self._error(exc, "cannot open") from exc
        except OSError as exc:          # copying a store off read-only media
            raise StoreError(f"cannot open run store {self.file}: {exc}") from exc
        self.mode = opened.mode
        self._sides = side_identity(self.file) if opened.mode == SHARED else None
        self._sides_checked = time.monotonic()
        if opened.copy_dir:
            self._copy_dir = opened.copy_dir
            weakref.finalize(self, shutil.rmtree, opened.copy_dir, ignore_errors=True)
        return opened.conn

    def _error(self, exc: sqlite3.Error, doing: str = "cannot read") -> StoreError:
        return explain(exc, self.file, getattr(self, "mode", SHARED), doing)

    def _fetch(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            if self._sides is not None and not self._depth and self._sides_replaced():
                self._reopen()          # the -wal/-shm we use were deleted: follow the new ones
            try:
                return self._conn.execute(sql, args).fetchall()
            except (sqlite3.ProgrammingError, sqlite3.InterfaceError) as exc:
                raise self._error(exc) from exc      # a closed reader, an argument SQLite cannot bind
            except sqlite3.Error as exc:
                if self._depth:                      # the snapshot is gone: no silent reopening
                    raise self._error(exc) from exc
            self._reopen()      # e.g. the -wal was replaced under a persistent connection
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    def _sides_replaced(self) -> bool:
        """Whether the store's -wal/-shm are other files than at open (checked once a second)."""
        now = time.monotonic()
        if now - self._sides_checked < SIDE_CHECK_S:
            return False
        self._sides_checked = now
        current = side_identity(self.file)
        return None not in current and current != self._sides

    def _reopen(self) -> None:
        with suppress(sqlite3.Error):
            self._conn.close()
        self._conn = self._open()

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Run several queries against one snapshot (one read transaction)."""
        with self._lock:
            self._fetch("BEGIN")
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                with suppress(sqlite3.Error):
                    self._conn.execute("COMMIT")

    def _refresh_keys(self) -> None:
        for key_id, kind, name in self._fetch("SELECT id, kind, name FROM keys WHERE id > ? "
                                              "ORDER BY id", (self._max_key_id,)):
            self._key_ids[(kind, name)] = self._max_key_id = key_id

    def _key_id(self, kind: str, name: str) -> int | None:
        key = (check_kind(kind), name)
        if key not in self._key_ids:
            self._refresh_keys()
        return self._key_ids.get(key)

    def steps(self) -> list[int]:
        """All recorded steps, ascending."""
        return [row[0] for row in self._fetch("SELECT step FROM steps ORDER BY step")]

    def latest_step(self) -> int | None:
        """Highest recorded step, or None before the first flush."""
        return self._fetch("SELECT max(step) FROM steps")[0][0]

    def scalar_names(self, derived: bool = False) -> list[str]:
        """Names of the recorded scalars, sorted; in a gathered run without the spreads and
        other ranks' values (``loss@max``, ``loss@rank3``) unless ``derived``."""
        rows = self._fetch(  # skip-scan over the primary key: one lookup per name, not per row
            "WITH RECURSIVE n(name) AS (SELECT min(name) FROM scalars UNION ALL "
            "SELECT (SELECT min(name) FROM scalars WHERE name > n.name) FROM n "
            "WHERE n.name IS NOT NULL) SELECT name FROM n WHERE name IS NOT NULL")
        names = [row[0] for row in rows]
        if not derived and spread.is_gathered(self.meta):
            names = [n for n in names if not spread.is_derived_scalar(n)]
        return names

    def series(self, name: str) -> Series:
        """Values of scalar ``name`` by step (steps where it is None are skipped)."""
        return _to_series(self._fetch("SELECT step, value FROM scalars WHERE name = ? "
                                      "AND value IS NOT NULL ORDER BY step", (name,)))

    def scalar_at(self, name: str, step: int) -> float | None:
        """Scalar ``name`` at ``step`` (None when it was not logged there)."""
        rows = self._fetch("SELECT value FROM scalars WHERE name = ? AND step = ?", (name, step))
        return decode(rows[0][0]) if rows else None

    def loss(self) -> Series:
        """The ``loss`` scalar by step."""
        return self.series("loss")

    def incidents(self) -> list[Incident]:
        """The steps where training broke (non-finite values, loss spikes, exploding
        gradients), in step order; [] for a store written before incidents existed."""
        if self._fetch("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'incidents'") == []:
            return []
        out = []
        for step, kind, summary, text in self._fetch(
                "SELECT step, kind, summary, data FROM incidents ORDER BY step, id"):
            try:
                data = json.loads(text) if text else {}
            except ValueError as exc:
                raise StoreError(f"{self.file}: incident at step {step} is damaged ({exc})") from exc
            out.append(Incident(int(step), str(kind), str(summary), dict(data.get("values") or {}),
                                tuple(data.get("nodes") or ()), tuple(data.get("detail_steps") or ()),
                                data.get("origin")))
        return out

    def rank_spread(self, key: str, stat: str | None = None, kind: str = "param") -> spread.Spread:
        """``stat`` of ``key`` over the ranks of a gathered run, by recorded step
        (:func:`graphviz_autograd.store.spread.rank_spread`)."""
        return spread.rank_spread(self, key, stat, kind)

    def outliers(self, step: int | None = None) -> list[spread.Outlier]:
        """Ranks flagged as outliers at ``step`` (all steps when None), with why."""
        return spread.outliers(self, step)

    def rank_stats_at(self, step: int, rank: int, kind: str = "param",
                      stats: tuple[str, ...] = ("grad_norm",)) -> dict[str, dict[str, float]]:
        """``{stat: {key: value}}`` of one rank at ``step`` (its detail, where kept)."""
        return spread.rank_stats_at(self, step, rank, kind, stats)

    def graph_versions(self) -> list[GraphVersion]:
        """Every distinct graph structure, by version."""
        rows = self._fetch("SELECT version, fingerprint, first_step, n_nodes FROM graphs "
                           "ORDER BY version")
        return [GraphVersion(*row) for row in rows]

    def version_at(self, step: int) -> int | None:
        """Graph version in use at ``step``: that of the last step <= ``step`` naming one."""
        rows = self._fetch("SELECT graph_version FROM steps WHERE step <= ? AND graph_version "
                           "IS NOT NULL ORDER BY step DESC LIMIT 1", (step,))
        return rows[0][0] if rows else None

    def _resolve_version(self, version: int | None) -> int:
        if version is None:
            version = self._fetch("SELECT max(version) FROM graphs")[0][0]
            if version is None:
                raise StoreError(f"no graph recorded yet in {self.file}")
        return version

    def graph_json(self, version: int | None = None) -> str:
        """JSON text of graph ``version`` (the latest when None); cached per version."""
        version = self._resolve_version(version)
        text = self._graph_json.get(version)
        if text is None:
            rows = self._fetch("SELECT json FROM graphs WHERE version = ?", (version,))
            if not rows:
                known = [v.version for v in self.graph_versions()]
                raise StoreError(f"no graph version {version} in {self.file}; available: {known}")
            text = self._graph_json[version] = rows[0][0]
        return text

    def graph(self, version: int | None = None) -> Graph:
        """Graph ``version`` (latest when None) as a :class:`~graphviz_autograd.graph.Graph`."""
        version = self._resolve_version(version)
        if version not in self._graphs:
            text = self.graph_json(version)
            try:
                self._graphs[version] = from_json(text)
            except (ValueError, TypeError, RecursionError) as exc:
                raise Damaged(f"its graph version {version} is not a readable graph "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from exc
        return self._graphs[version]

    def graph_at(self, step: int) -> Any:
        """Graph in use at ``step``, or None when no graph was recorded by then."""
        version = self.version_at(step)
        return None if version is None else self.graph(version)

    def keys(self, kind: str) -> list[str]:
        """Names of the keys of ``kind`` ('param', 'node' or 'module'), in first-seen order."""
        rows = self._fetch("SELECT name FROM keys WHERE kind = ? ORDER BY id", (check_kind(kind),))
        return [row[0] for row in rows]

    def has_key(self, kind: str, name: str) -> bool:
        """Whether any stats were recorded for ``name`` of ``kind``."""
        return self._key_id(kind, name) is not None

    def _stat_series(self, kind: str, name: str, stat: str) -> Series:
        try:
            column = check_stat(stat)
        except StoreError as exc:
            raise UnknownSeriesError(f"{exc}{_close(stat, STATS, listed=True)}") from None
        key_id = self._key_id(kind, name)
        if key_id is None:
            known = self._known_names(kind)
            if name not in known:
                what = {"node": "graph node", "param": "parameter", "module": "module"}[kind]
                raise UnknownSeriesError(f"no {what} {name!r} in {self.file}{_close(name, known)}")
            return Series([], [])         # in the graph, no statistics recorded (yet)
        if not self._chunked:       # schema 1: one row per key and step
            return _to_series(self._fetch(f"SELECT step, {column} FROM stats WHERE key_id = ? "
                                          f"AND {column} IS NOT NULL ORDER BY step", (key_id,)))
        return Series(*chunks.series_of(self._fetch(
            f"SELECT steps, {column} FROM chunks WHERE key_id = ? AND {column} IS NOT NULL "
            f"ORDER BY first_step", (key_id,))))

    def _known_names(self, kind: str) -> list[str]:
        """Names of ``kind`` the run knows: recorded keys, and every graph version's nodes
        (node ids), parameters or module paths (and their parents)."""
        names = dict.fromkeys(self.keys(kind))
        for version in self.graph_versions():
            try:
                graph = self.graph(version.version)
            except GraphvizAutogradError:      # a damaged graph names nothing
                continue
            if kind == "node":
                names.update(dict.fromkeys(n.id for n in graph.nodes))
            elif kind == "param":
                names.update(dict.fromkeys(graph.params))
            else:
                for path in graph.modules():
                    parts = path.split(".")
                    names.update(dict.fromkeys(".".join(parts[:i + 1]) for i in range(len(parts))))
        return list(names)

    def node_series(self, node_id: str, stat: str = "grad_norm") -> Series:
        """``stat`` of graph node ``node_id`` by step.

        Any id of the run's graphs works, including a parameter's (``param:fc1.weight``,
        the same series as ``param_series("fc1.weight")``); a node without recorded
        statistics gives an empty series.

        Raises:
            KeyError: (an ``UnknownSeriesError``) ``node_id`` is in no graph of the run, or
                ``stat`` is not a statistic; the message names close matches.
        """
        if node_id.startswith("param:") and self._key_id("node", node_id) is None:
            return self._stat_series("param", node_id[len("param:"):], stat)
        return self._stat_series("node", node_id, stat)

    def param_series(self, name: str, stat: str = "grad_norm") -> Series:
        """``stat`` of parameter ``name`` (e.g. ``fc1.weight``) by step; KeyError for an
        unknown parameter or statistic (naming close matches)."""
        return self._stat_series("param", name, stat)

    def module_series(self, name: str, stat: str = "act_mean") -> Series:
        """``stat`` of module ``name`` by step (empty when the module has no statistics);
        KeyError for a module in no graph of the run, or an unknown statistic."""
        return self._stat_series("module", name, stat)

    def stats_at(self, step: int, kind: str = "node", stat: str = "grad_norm") -> dict[str, float]:
        """``stat`` of every key of ``kind`` at ``step``; keys where it is None are left out."""
        return self.stats_table_at(step, kind, (stat,))[stat]

    def stats_table_at(self, step: int, kind: str = "node",
                       stats: tuple[str, ...] = ("grad_norm",)) -> dict[str, dict[str, float]]:
        """``{stat: {key: value}}`` for every key of ``kind`` at ``step``, in one query."""
        columns, kind = [check_stat(stat) for stat in stats], check_kind(kind)
        out: dict[str, dict[str, float]] = {stat: {} for stat in stats}
        if not columns:
            return out
        if not self._chunked:
            rows = self._fetch(f"SELECT k.name, {', '.join('s.' + c for c in columns)} FROM stats s "
                               f"JOIN keys k ON k.id = s.key_id WHERE s.step = ? AND k.kind = ? "
                               f"ORDER BY s.key_id", (step, kind))
            for name, *values in rows:
                for stat, value in zip(stats, values):
                    if value is not None:
                        out[stat][name] = decode(value)
            return out
        # Per key, the chunk starting last at or before `step` (one index probe each). A chunk
        # of evenly spaced steps yields just the 8 bytes of each value (substr); others whole.
        picks = ", ".join(f"CASE WHEN c.stride > 0 THEN substr(c.{c}, (?1 - c.first_step) / c.stride "
                          f"* 8 + 1, 8) ELSE c.{c} END" for c in columns)
        rows = self._fetch(
            f"SELECT k.name, c.stride, CASE WHEN c.stride = 0 THEN c.steps END, {picks} FROM keys k "
            f"JOIN chunks c ON c.key_id = k.id AND c.first_step = (SELECT max(first_step) FROM chunks "
            f"WHERE key_id = k.id AND first_step <= ?1) WHERE k.kind = ?2 AND c.last_step >= ?1 "
            f"AND (c.stride = 0 OR (?1 - c.first_step) % c.stride = 0) ORDER BY k.id", (step, kind))
        for name, stride, steps_blob, *blobs in rows:
            i = 0 if stride else chunks.index_of(steps_blob, step)
            if i is None:
                continue
            for stat, blob in zip(stats, blobs):
                if blob is not None:
                    value = chunks.value_at(blob, i)
                    if value is not None:
                        out[stat][name] = value
        return out

    def matrix(self, kind: str, stat: str, keys: list[str] | None = None,
               max_steps: int | None = None) -> tuple[list[str], list[int], list[list[float | None]]]:
        """``stat`` as a keys x steps grid, for heat maps: one column per step at which any of
        the rows has a value (every step of the run when none has).

        Args:
            kind: 'param', 'node' or 'module'.
            stat: One of :data:`STATS`.
            keys: Row keys (default: all keys of ``kind``).
            max_steps: At most this many columns: past it, neighbouring steps merge into one
                column holding the mean of the values recorded in it (never dropped), labelled
                by its last step.

        Returns:
            ``(keys, steps, grid)`` with ``grid[i][j]`` the value of ``keys[i]`` at
            ``steps[j]`` (or the mean over the steps after ``steps[j - 1]`` up to ``steps[j]``),
            or None where nothing was recorded.

        Example:
            Statistics recorded every 10th of 400 steps, ``max_steps=150``: 40 columns, each
            with its value (the issue-15 heat map showed 15 of them).
        """
        column, kind = check_stat(stat), check_kind(kind)
        if max_steps is not None and max_steps < 1:
            raise StoreError(f"max_steps must be >= 1 or None, got {max_steps}")
        with self._snapshot():
            names = self.keys(kind) if keys is None else list(keys)
            rows: list[dict[int, float]] = []
            for name in names:
                key_id = self._key_id(kind, name)
                if key_id is None:
                    rows.append({})
                elif self._chunked:
                    rows.append(dict(zip(*self._stat_series(kind, name, stat))))
                else:
                    rows.append({step: decode(value) for step, value in self._fetch(
                        f"SELECT step, {column} FROM stats WHERE key_id = ? AND {column} IS NOT NULL",
                        (key_id,))})
            recorded = sorted(set().union(*rows)) if rows else []
            steps = recorded or self.steps()
        bins = _bins(len(steps), max_steps)
        labels = [steps[hi - 1] for _lo, hi in bins]
        grid = [[_mean([row[s] for s in steps[lo:hi] if s in row]) for lo, hi in bins] for row in rows]
        return names, labels, grid

    def close(self) -> None:
        """Close the connection (and remove the private copy of a ``'copy'`` open)."""
        with self._lock:
            with suppress(sqlite3.Error):
                self._conn.close()
            if self._copy_dir:
                shutil.rmtree(self._copy_dir, ignore_errors=True)


for _name, _method in list(vars(RankReader).items()):   # a damaged store: StoreError from every read
    if not _name.startswith("_") and _name != "close" and callable(_method):
        setattr(RankReader, _name, typed_reads(_method))


class UnknownSeriesError(StoreError, KeyError):
    """A series asked for by a node id, parameter, module or statistic the run does not have."""

    __str__ = StoreError.__str__          # the message, not KeyError's quoted repr


def _close(name: str, known, listed: bool = False) -> str:
    """``"; did you mean 'fc1.weight'?"`` (close matches among ``known``), or the valid names
    (nothing more when the caller's message ``listed`` them already)."""
    import difflib

    known = list(known)
    matches = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if not matches:
        matches = [k for k in known if name in k or k in name][:3]
    if matches:
        return "; did you mean " + " or ".join(repr(m) for m in matches) + "?"
    if listed:
        return ""
    if not known:
        return "; the run has none recorded yet"
    return "; known: " + ", ".join(repr(k) for k in known[:8]) + (", ..." if len(known) > 8 else "")


def _to_series(rows: list[tuple]) -> Series:
    return Series([row[0] for row in rows],
                  [v if v.__class__ is float else decode(v) for _, v in rows])


def _bins(n: int, most: int | None) -> list[tuple[int, int]]:
    """``(lo, hi)`` index ranges splitting ``n`` items into at most ``most`` nearly even runs."""
    if most is None or n <= most:
        return [(i, i + 1) for i in range(n)]
    edges = [round(j * n / most) for j in range(most + 1)]
    return [(lo, hi) for lo, hi in zip(edges, edges[1:]) if hi > lo]


def _mean(values: list[float | None]) -> float | None:
    """Mean of the recorded values (NaN and infinities kept: they stay visible), None if none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return values[0] if len(values) == 1 else sum(values) / len(values)


def scan_ranks(run_dir: Path) -> dict[int, Path]:
    """``{rank: store file}`` of a run directory, by rank."""
    found = {}
    for file in run_dir.glob(STORE_GLOB):
        rank = file.name[len("rank-"):-len(".gva.sqlite")]
        if rank.isdigit():
            found[int(rank)] = file
    return dict(sorted(found.items()))
