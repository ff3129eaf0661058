"""Writing one rank's store: :class:`RunWriter` buffers steps and flushes them in one
transaction.

Statistics are written in *chunks* (``chunks.py``): one row per key holds a run of
steps as packed arrays, so a flush writes one row per key (bench_store.py: 240-290k
rows/s against 65k for a row per key and step). Steps must increase past what a
flush has written; a step still buffered may be added again to replace it.

Example:
    >>> with RunWriter("runs/demo") as w:  # doctest: +SKIP
    ...     w.add_step(0, wall_time=time.time(), graph_version=None, scalars={"loss": 2.3},
    ...                stats={"param": [("fc.weight", {"grad_norm": 0.1})]})
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from graphviz_autograd.errors import StoreError
from graphviz_autograd.store import chunks
from graphviz_autograd.store.schema import (BUSY_TIMEOUT_S, INSERT_CHUNK, SCHEMA, STAT_SET, ROW_WIDTH,
                                            CHUNK_MAX, CHUNK_MIN, MAX_BUFFERED_ROWS, STATS,
                                            STORE_SCHEMA_VERSION, check_kind, check_store,
                                            Closing, encode, meta_rows, remove_store_files,
                                            stat_value, store_filename)


class RunWriter(Closing):
    """Writes the records of one rank to ``<run_dir>/rank-<rank>.gva.sqlite``.

    Rows are buffered and written in one transaction per flush: by the first
    :meth:`add_step` ``flush_interval`` seconds after the last flush, by
    :meth:`flush` and by :meth:`close`. Also a context manager.

    Args:
        run_dir: Directory of the run; created if missing.
        rank: Rank of this process (0 when not distributed).
        world_size: Number of ranks in the run.
        meta: Extra JSON-serializable run information (model name, config, ...).
        flush_interval: Seconds between automatic flushes; 0 flushes every step.
        overwrite: Replace a store this rank already wrote in ``run_dir``.

    Raises:
        StoreError: ``run_dir`` is not writable, already holds a run of this rank
            (and not ``overwrite``), or holds a file that is not a store.
        SchemaVersionError: The existing store is from a newer version.
    """

    def __init__(self, run_dir: str | os.PathLike, *, rank: int = 0, world_size: int = 1,
                 meta: dict[str, Any] | None = None, flush_interval: float = 2.0,
                 overwrite: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise StoreError(f"rank={rank} must be in [0, world_size={world_size})")
        self.run_dir = Path(run_dir)
        self.rank, self.world_size, self.flush_interval = rank, world_size, flush_interval
        self.path = self.run_dir / store_filename(rank)
        rows_meta = meta_rows(meta or {}, rank, world_size)  # before anything is deleted
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create run directory {self.run_dir}: {exc}. Fix: pass a run_dir "
                             f"in a writable location (its parents must be directories)") from exc
        self._clear_existing(overwrite)
        self._create(rows_meta)
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA cache_size=-65536")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open run store {self.path}: {exc}") from exc
        self._graph_versions: dict[str, int] = {}  # fingerprint -> version
        self._key_ids: dict[str, dict[str, int]] = {}  # kind -> name -> keys.id
        self._n_keys = 0
        self._readded = False       # a buffered step was added again (rows need deduplicating)
        self._graphs, self._keys, self._steps, self._scalars = [], [], [], []
        self._incidents: dict[int, tuple] = {}  # id -> row, written (again) at the next flush
        self._outliers: dict[tuple[int, int], tuple] = {}   # (step, rank) -> row (a gathered run)
        self._pending: dict[int, list] = {}   # key_id -> [step, *STATS, step, ...] not yet written
        self._n_pending = 0
        self._open: dict[int, list] = {}      # key_id -> its last chunk (flat) while it is short
        self._written_max: int | None = None         # highest step on disk; later steps must exceed it
        self._last_flush = time.monotonic()
        self._closed = False

    def _clear_existing(self, overwrite: bool) -> None:
        """Delete an old store of this rank if allowed, else explain why we stop."""
        if self.path.exists() and not overwrite:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open existing run store {self.path}: {exc}") from exc
            try:
                check_store(conn, self.path)
                has_steps = conn.execute("SELECT 1 FROM steps LIMIT 1").fetchone() is not None
            finally:
                conn.close()
            if has_steps:
                raise StoreError(f"run directory {self.run_dir} already holds a run ({self.path}). "
                                 f"Fix: pass overwrite=True to replace it, or choose another run dir")
        try:
            remove_store_files(self.path)
        except OSError as exc:
            raise StoreError(f"cannot remove old run store {self.path}: {exc}") from exc

    def _create(self, meta_rows: list[tuple[str, str]]) -> None:
        """Build the schema in a temporary file and move it in, so readers never see half of it."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            remove_store_files(tmp)
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version={STORE_SCHEMA_VERSION};")
                conn.executemany("INSERT INTO meta VALUES (?, ?)", meta_rows)
                conn.execute("COMMIT")
            finally:
                conn.close()
            os.replace(tmp, self.path)
        except (sqlite3.Error, OSError) as exc:
            with suppress(OSError):
                remove_store_files(tmp)   # do not leave a half-built file on a full disk
            raise StoreError(f"cannot create run store {self.path}: {exc}. Fix: make sure "
                             f"{self.run_dir} is writable and the disk has free space") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"RunWriter for {self.path} is closed")

    def add_graph(self, graph_json: str, fingerprint: str, *, first_step: int, n_nodes: int) -> int:
        """Record a graph structure; return its version (1, 2, ...), the old one for a known fingerprint."""
        self._check_open()
        if not isinstance(graph_json, str):
            raise StoreError(f"graph_json must be JSON text (str), got {type(graph_json).__name__}")
        version = self._graph_versions.get(fingerprint)
        if version is None:
            version = self._graph_versions[fingerprint] = len(self._graph_versions) + 1
            self._graphs.append((version, fingerprint, int(first_step), int(n_nodes), graph_json))
        return version

    def add_incident(self, incident_id: int, step: int, kind: str, summary: str, data: dict) -> None:
        """Buffer incident ``incident_id`` (adding it again with more detail replaces it).

        ``data`` holds ``values``, ``nodes``, ``detail_steps`` and ``origin`` (JSON-able).
        """
        self._check_open()
        try:
            text = json.dumps(data, allow_nan=True, default=str)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"incident {incident_id} at step {step}: data must be JSON-able ({exc})") from exc
        self._incidents[int(incident_id)] = (int(incident_id), int(step), str(kind), str(summary), text)

    def add_outlier(self, step: int, rank: int, why: str, data: dict) -> None:
        """Buffer that ``rank`` was an outlier among the ranks at ``step`` (a gathered run)."""
        self._check_open()
        try:
            text = json.dumps(data, allow_nan=True, default=str)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"outlier rank {rank} at step {step}: data must be JSON-able ({exc})") from exc
        self._outliers[(int(step), int(rank))] = (int(step), int(rank), str(why), text)

    def add_late(self, step: int, *, scalars: dict[str, float] | None = None,
                 stats: dict[str, list] | None = None) -> None:
        """Buffer scalars and statistics of a step added before (a gathered run writes the
        spreads of a step when the next recorded step brings them).

        Per key, steps must still increase: ``stats`` keys must have no later step yet.
        """
        self._check_open()
        step = int(step)
        try:
            rows = [(name, step, encode(value)) for name, value in (scalars or {}).items()]
        except (TypeError, ValueError) as exc:
            raise StoreError(f"step {step}: scalar values must be numbers or None ({exc})") from exc
        staged: list[list] = []
        try:
            for kind, entries in (stats or {}).items():
                self._stat_rows(check_kind(kind), entries, step, staged)
        except BaseException:
            for pending in staged:
                del pending[-ROW_WIDTH:]
            raise
        self._scalars.extend(rows)
        self._n_pending += len(staged)

    def add_step(self, step: int, *, wall_time: float, graph_version: int | None,
                 scalars: dict[str, float],
                 stats: dict[str, list[tuple[str, dict[str, float]]]] | None = None) -> None:
        """Buffer one training step: its scalars (loss, lr, ...) and per-key stats.

        Args:
            step: Step number, after every step already flushed; re-adding a step
                that is still buffered replaces it.
            wall_time: Unix time of the step.
            graph_version: Version from :meth:`add_graph`, or None.
            scalars: Name to value; NaN, inf and None are kept.
            stats: Kind (``'param'``, ``'node'`` or ``'module'``) to a list of
                ``(key name, {stat: value})``; stat names come from :data:`STATS`.
                A tuple with one value per :data:`STATS` entry, in that order, may
                stand for the dict (what the recorder writes: no dict per key).

        Raises:
            StoreError: Unknown kind, stat name or graph version, a value that is
                not a number, or a failed automatic flush (the data stays buffered).
        """
        self._check_open()
        step = int(step)
        if self._written_max is not None and step <= self._written_max:
            raise StoreError(f"step {step} is not after step {self._written_max}, which is already "
                             f"written to {self.path}; steps must increase (a step still buffered "
                             f"may be re-added to replace it)")
        if graph_version is not None and not 1 <= graph_version <= len(self._graph_versions):
            raise StoreError(f"unknown graph_version {graph_version}; add_graph() returned versions "
                             f"1..{len(self._graph_versions)}")
        try:
            scalar_rows = [(name, step, encode(value)) for name, value in scalars.items()]
        except (TypeError, ValueError) as exc:
            raise StoreError(f"step {step}: scalar values must be numbers or None ({exc})") from exc
        staged: list[list] = []         # the pending lists this step appended to, for a rollback
        try:
            for kind, entries in (stats or {}).items():
                self._stat_rows(check_kind(kind), entries, step, staged)
        except BaseException:
            for rows in staged:
                del rows[-ROW_WIDTH:]
            raise
        if self._steps and step <= self._steps[-1][0]:
            self._readded = True
        self._steps.append((step, float(wall_time), graph_version))
        self._scalars.extend(scalar_rows)
        self._n_pending += len(staged)
        if (self._n_pending >= MAX_BUFFERED_ROWS
                or time.monotonic() - self._last_flush >= self.flush_interval):
            self.flush()

    def _stat_rows(self, kind: str, entries: list, step: int, staged: list[list]) -> None:
        """Buffer one ``(step, (*STATS,))`` row per entry under its key (the hot path)."""
        key_ids = self._key_ids.setdefault(kind, {})
        pending = self._pending
        for name, values in entries:
            if type(values) is tuple:       # already in STATS order (the recorder's rows)
                if len(values) != ROW_WIDTH - 1:
                    raise StoreError(f"step {step}, {kind} {name!r}: a tuple of stats needs one value "
                                     f"per STATS entry ({ROW_WIDTH - 1}), got {len(values)}")
                row = values
            elif not values.keys() <= STAT_SET:
                raise StoreError(f"unknown stat names {sorted(set(values) - STAT_SET)} for {kind} "
                                 f"{name!r}; valid stats: {', '.join(STATS)}")
            else:
                row = tuple(map(values.get, STATS))
            try:  # fast check: all numbers (or None), else convert value by value
                clean = sum(filter(None, row), 0.0).__class__ is float
            except TypeError:
                clean = False
            if not clean:
                try:
                    row = tuple(map(stat_value, row))
                except (TypeError, ValueError) as exc:
                    raise StoreError(f"step {step}, {kind} {name!r}: stat values must be numbers "
                                     f"or None ({exc})") from exc
            key_id = key_ids.get(name)
            if key_id is None:
                key_id = key_ids[name] = self._n_keys = self._n_keys + 1
                self._keys.append((key_id, kind, name))
            rows = pending.get(key_id)
            if rows is None:
                rows = pending[key_id] = []
            rows.append(step)           # flat [step, *STATS, step, *STATS, ...]: no object per row
            rows.extend(row)
            staged.append(rows)

    def flush(self) -> None:
        """Write everything buffered in one transaction.

        Raises:
            StoreError: Disk full, file not writable, ...; the buffer is kept for a retry.
        """
        self._check_open()
        if (self._steps or self._graphs or self._keys or self._incidents or self._outliers
                or self._scalars or self._pending):
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT OR REPLACE INTO incidents VALUES (?, ?, ?, ?, ?)",
                                 list(self._incidents.values()))
                conn.executemany("INSERT OR REPLACE INTO outliers VALUES (?, ?, ?, ?)",
                                 list(self._outliers.values()))
                conn.executemany("INSERT INTO graphs VALUES (?, ?, ?, ?, ?)", self._graphs)
                conn.executemany("INSERT INTO keys VALUES (?, ?, ?)", self._keys)
                conn.executemany("INSERT OR REPLACE INTO steps VALUES (?, ?, ?)", self._steps)
                conn.executemany("INSERT OR REPLACE INTO scalars VALUES (?, ?, ?)", self._scalars)
                chunks, opened = self._chunk_rows()
                conn.executemany(INSERT_CHUNK, chunks)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise StoreError(f"cannot write {len(self._steps)} buffered steps to {self.path}: "
                                 f"{exc}. Fix: free disk space or restore write access, then call "
                                 f"flush() again; the data is kept in memory") from exc
            if self._steps:
                self._written_max = max(row[0] for row in self._steps)
            for buffer in (self._graphs, self._keys, self._steps, self._scalars, self._pending,
                           self._incidents, self._outliers):
                buffer.clear()
            self._n_pending = 0
            self._open = opened
            self._readded = False
        self._last_flush = time.monotonic()

    def _chunk_rows(self) -> tuple[list[tuple], dict[int, list]]:
        """One chunk row per key with buffered stats, and the keys' short last chunks after it.

        A key whose last chunk is still short (< :data:`CHUNK_MIN` steps) gets that
        chunk rewritten with the new steps appended (same key and first step), so
        frequent flushes do not leave a series in thousands of tiny chunks.
        """
        out, opened = [], dict(self._open)
        for key_id, rows in self._pending.items():
            if not rows:                # a step that failed validation left it empty
                continue
            prev = self._open.get(key_id)
            if prev:
                rows = prev + rows
            if self._readded:           # a buffered step was re-added: the last one wins
                latest = {rows[i]: rows[i + 1:i + ROW_WIDTH] for i in range(0, len(rows), ROW_WIDTH)}
                rows = [x for step in sorted(latest) for x in (step, *latest[step])]
            for first in range(0, len(rows), CHUNK_MAX * ROW_WIDTH):
                part = rows[first:first + CHUNK_MAX * ROW_WIDTH]
                steps = part[::ROW_WIDTH]
                out.append((key_id, steps[0], steps[-1], len(steps), chunks.stride_of(steps),
                            chunks.pack_steps(steps),
                            *(chunks.pack_values(part[k::ROW_WIDTH]) for k in range(1, ROW_WIDTH))))
            if len(part) < CHUNK_MIN * ROW_WIDTH:
                opened[key_id] = part
            else:
                opened.pop(key_id, None)
        return out, opened

    def close(self) -> None:
        """Flush and close the file. Calling it again does nothing."""
        if not self._closed:
            self.flush()
            self._conn.close()
            self._closed = True


