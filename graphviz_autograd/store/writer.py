"""Writing one rank's store: :class:`RunWriter` buffers steps and flushes them in one
transaction, from a background thread every ``flush_interval`` seconds (``flusher.py``).

Statistics are written in *chunks* (``chunks.py``): one row per key holds a run of
steps as packed arrays, so a flush writes one row per key (bench_store.py: 240-290k
rows/s against 65k for a row per key and step). Steps must increase past what a
flush has taken; a step still buffered may be added again to replace it.

One writer per store: a second one for the same file is refused (``lock.py``). A
failed flush writes nothing, keeps the data buffered, leaves the writer usable and
raises what failed (a :class:`StoreError` for SQLite's errors, ``KeyboardInterrupt``
as itself). Values are checked when added, so a bad one is refused at once, by name.

Example:
    >>> with RunWriter("runs/demo") as w:  # doctest: +SKIP
    ...     w.add_step(0, wall_time=time.time(), graph_version=None, scalars={"loss": 2.3},
    ...                stats={"param": [("fc.weight", {"grad_norm": 0.1})]})
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
import warnings
from contextlib import suppress
from pathlib import Path
from typing import Any

from graphviz_autograd.errors import StoreError
from graphviz_autograd.store import flusher
from graphviz_autograd.store.buffer import Buffer, chunk_rows
from graphviz_autograd.store.files import clear_existing, create
from graphviz_autograd.store.lock import WriterLock
from graphviz_autograd.store.schema import (BUSY_TIMEOUT_S, INSERT_CHUNK, STAT_SET, ROW_WIDTH,
                                            MAX_BUFFERED_ROWS, STATS, check_kind, Closing, encode,
                                            float64, int64, meta_rows, stat_value, store_filename,
                                            text)
from graphviz_autograd.store.wal import WalGuard

_INHERITED: list = []       # connections a forked child inherited: never used, never closed


class RunWriter(Closing):
    """Writes the records of one rank to ``<run_dir>/rank-<rank>.gva.sqlite``.

    Rows are buffered and written in one transaction per flush: by a background
    thread every ``flush_interval`` seconds (whatever the training loop does), by
    :meth:`flush` and by :meth:`close` (also called at interpreter exit). With
    ``flush_interval=0`` every :meth:`add_step` writes before it returns. Also a
    context manager.

    Args:
        run_dir: Directory of the run; created if missing.
        rank: Rank of this process (0 when not distributed).
        world_size: Number of ranks in the run.
        meta: Extra JSON-serializable run information (model name, config, ...).
        flush_interval: Seconds between flushes; 0 flushes every step.
        overwrite: Replace a store this rank already wrote in ``run_dir``.

    Raises:
        StoreError: ``run_dir`` is not writable, already holds a run of this rank
            (and not ``overwrite``), holds a file that is not a store, or another
            writer is writing this rank's store right now.
        SchemaVersionError: The existing store is from a newer version.
    """

    def __init__(self, run_dir: str | os.PathLike, *, rank: int = 0, world_size: int = 1,
                 meta: dict[str, Any] | None = None, flush_interval: float = 2.0,
                 overwrite: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise StoreError(f"rank={rank} must be in [0, world_size={world_size})")
        if (isinstance(flush_interval, bool) or not isinstance(flush_interval, (int, float))
                or not 0 <= flush_interval < math.inf):
            raise StoreError(f"flush_interval={flush_interval!r} must be a finite number of seconds "
                             f">= 0 (0 writes every step)")
        self.run_dir = Path(run_dir)
        self.rank, self.world_size, self.flush_interval = rank, world_size, flush_interval
        self.path = self.run_dir / store_filename(rank)
        rows_meta = meta_rows(meta or {}, rank, world_size)  # before anything is deleted
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create run directory {self.run_dir}: {exc}. Fix: pass a run_dir "
                             f"in a writable location (its parents must be directories)") from exc
        self._closed = True             # until everything below worked (close() is then a no-op)
        self._file_lock = WriterLock(self.path)     # before anything of this rank is touched
        try:
            clear_existing(self.path, overwrite)
            create(self.path, rows_meta)
            self._conn = self._connect()
        except BaseException:
            self._file_lock.release()
            raise
        self._pid = os.getpid()
        self._wal = WalGuard(self.path)
        self._graph_versions: dict[str, int] = {}  # fingerprint -> version
        self._key_ids: dict[str, dict[str, int]] = {}  # kind -> name -> keys.id
        self._n_keys = 0
        self._buf = Buffer()
        self._open: dict[int, list] = {}      # key_id -> its last chunk (flat) while it is short
        self._written_max: int | None = None  # highest step a flush took; later steps must exceed it
        self._lock = threading.Lock()         # the buffers (held briefly by add_* and by a flush)
        self._flush_lock = threading.Lock()   # one flush at a time (the connection)
        self._failing_since: float | None = None   # first of the flushes failing since the last success
        self._closed = False
        flusher.register(self)
        self._flusher = flusher.Flusher(self, flush_interval) if flush_interval > 0 else None

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S,
                                   check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-65536")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open run store {self.path}: {exc}") from exc
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"RunWriter for {self.path} is closed")
        if self._pid != os.getpid():
            raise StoreError(f"RunWriter for {self.path} was opened by process {self._pid}; this "
                             f"process ({os.getpid()}) is a fork of it and cannot write that store. "
                             f"Fix: open a RunWriter (or Recorder) in this process, with its own "
                             f"run_dir or rank")

    def add_graph(self, graph_json: str, fingerprint: str, *, first_step: int, n_nodes: int) -> int:
        """Record a graph structure; return its version (1, 2, ...), the old one for a known fingerprint."""
        self._check_open()
        if not isinstance(graph_json, str):
            raise StoreError(f"graph_json must be JSON text (str), got {type(graph_json).__name__}")
        text(graph_json, "graph_json")
        text(fingerprint, "graph fingerprint")
        row_ints = int64(first_step, "first_step"), int64(n_nodes, "n_nodes")
        with self._lock:
            version = self._graph_versions.get(fingerprint)
            if version is None:
                version = self._graph_versions[fingerprint] = len(self._graph_versions) + 1
                self._buf.graphs.append((version, fingerprint, *row_ints, graph_json))
        return version

    def add_incident(self, incident_id: int, step: int, kind: str, summary: str, data: dict) -> None:
        """Buffer incident ``incident_id`` (adding it again with more detail replaces it).

        ``data`` holds ``values``, ``nodes``, ``detail_steps`` and ``origin`` (JSON-able).
        """
        self._check_open()
        body = _json(data, f"incident {incident_id} at step {step}")
        row = (int(incident_id), int64(step, "incident step"), text(kind, "incident kind"),
               text(summary, "incident summary"), body)
        with self._lock:
            self._buf.incidents[row[0]] = row

    def add_outlier(self, step: int, rank: int, why: str, data: dict) -> None:
        """Buffer that ``rank`` was an outlier among the ranks at ``step`` (a gathered run)."""
        self._check_open()
        body = _json(data, f"outlier rank {rank} at step {step}")
        row = (int64(step, "outlier step"), int(rank), text(why, "outlier reason"), body)
        with self._lock:
            self._buf.outliers[(row[0], row[1])] = row

    def add_late(self, step: int, *, scalars: dict[str, float] | None = None,
                 stats: dict[str, list] | None = None) -> None:
        """Buffer scalars and statistics of a step added before (a gathered run writes the
        spreads of a step when the next recorded step brings them).

        Per key, steps must still increase: ``stats`` keys must have no later step yet.
        """
        self._check_open()
        step = int64(step, "step")
        rows = [(text(name, f"step {step}: scalar name"), step,
                 encode(float64(value, f"step {step}: scalar {name!r:.60}"))
                 if value is not None else None)
                for name, value in (scalars or {}).items()]
        with self._lock:
            buf = self._buf
            staged: list[tuple[list, int]] = []
            try:
                for kind, entries in (stats or {}).items():
                    self._stat_rows(check_kind(kind), entries, step, staged)
                buf.scalars.extend(rows)
                buf.n_pending += len(staged)
            except BaseException:
                for pending, n in staged:
                    del pending[n:]
                raise

    def add_step(self, step: int, *, wall_time: float, graph_version: int | None,
                 scalars: dict[str, float],
                 stats: dict[str, list[tuple[str, dict[str, float]]]] | None = None) -> None:
        """Buffer one training step: its scalars (loss, lr, ...) and per-key stats.

        Args:
            step: Step number (a signed 64-bit integer), after every step a flush
                took; re-adding a step that is still buffered replaces it.
            wall_time: Unix time of the step.
            graph_version: Version from :meth:`add_graph`, or None.
            scalars: Name to value; NaN, inf and None are kept.
            stats: Kind (``'param'``, ``'node'`` or ``'module'``) to a list of
                ``(key name, {stat: value})``; stat names come from :data:`STATS`.
                A tuple with one value per :data:`STATS` entry, in that order, may
                stand for the dict (what the recorder writes: no dict per key).

        Raises:
            StoreError: Unknown kind, stat name or graph version, a value that is
                not a number (or does not fit a float64 / int64), a name that is
                not text, or a failed flush (the data stays buffered).
        """
        self._check_open()
        step = int64(step, "step")
        wall_time = float64(wall_time, f"step {step}: wall_time")
        scalar_rows = [(text(name, f"step {step}: scalar name"), step,
                        encode(float64(value, f"step {step}: scalar {name!r:.60}"))
                        if value is not None else None)
                       for name, value in scalars.items()]
        with self._lock:
            if self._written_max is not None and step <= self._written_max:
                raise StoreError(f"step {step} is not after step {self._written_max}, which is "
                                 f"already written to {self.path}; steps must increase (a step "
                                 f"still buffered may be re-added to replace it)")
            if graph_version is not None and not 1 <= graph_version <= len(self._graph_versions):
                raise StoreError(f"unknown graph_version {graph_version}; add_graph() returned "
                                 f"versions 1..{len(self._graph_versions)}")
            buf = self._buf
            marks = (len(buf.steps), len(buf.scalars), buf.max_step, buf.readded, buf.n_pending)
            staged: list[tuple[list, int]] = []    # (pending list, its length before this step)
            try:        # all or nothing, also when Ctrl-C lands in the middle
                for kind, entries in (stats or {}).items():
                    self._stat_rows(check_kind(kind), entries, step, staged)
                if buf.max_step is not None and step <= buf.max_step:
                    buf.readded = True
                else:
                    buf.max_step = step
                buf.steps.append((step, wall_time, graph_version))
                buf.scalars.extend(scalar_rows)
                buf.n_pending += len(staged)
            except BaseException:
                for rows, n in staged:
                    del rows[n:]
                del buf.steps[marks[0]:], buf.scalars[marks[1]:]
                buf.max_step, buf.readded, buf.n_pending = marks[2:]
                raise
            n_pending = buf.n_pending
        if self._flusher is None:
            self.flush()
        elif n_pending >= MAX_BUFFERED_ROWS:      # memory bound: now, in the background if it can
            if n_pending >= 2 * MAX_BUFFERED_ROWS or self._failing_since is not None:
                self.flush()
            else:
                self._flusher.wake()
        elif (self._failing_since is not None
              and time.monotonic() - self._failing_since >= self.flush_interval):
            self.flush()        # background flushes failed for an interval: retry here, raise it

    def _stat_rows(self, kind: str, entries: list, step: int, staged: list[tuple]) -> None:
        """Buffer one ``(step, (*STATS,))`` row per entry under its key (the hot path)."""
        key_ids = self._key_ids.setdefault(kind, {})
        pending = self._buf.pending
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
            except (TypeError, OverflowError):
                clean = False
            if not clean:
                row = tuple(stat_value(v) if v is None else float64(v, f"step {step}, {kind} "
                            f"{name!r:.60}, {stat}") for stat, v in zip(STATS, row))
            try:
                key_id = key_ids.get(name)
            except TypeError:
                key_id = None           # unhashable: text() below says what it is
            if key_id is None:
                text(name, f"{kind} key name")
                key_id = key_ids[name] = self._n_keys = self._n_keys + 1
                self._buf.keys.append((key_id, kind, name))
            rows = pending.get(key_id)
            if rows is None:
                rows = pending[key_id] = []
            staged.append((rows, len(rows)))
            rows.append(step)           # flat [step, *STATS, step, *STATS, ...]: no object per row
            rows.extend(row)

    # -- flushing -------------------------------------------------------------------------
    def flush(self) -> None:
        """Write everything buffered in one transaction.

        Raises:
            StoreError: Disk full, file not writable, ...; nothing of this flush is
                written, the data stays buffered for a retry and the writer usable.
            KeyboardInterrupt: Ctrl-C during the flush (same guarantees).
        """
        self._check_open()
        with self._flush_lock:
            try:
                self._flush()
            except BaseException:
                self._failed()
                raise
            self._failing_since = None

    def background_flush(self) -> None:
        """The flusher thread's flush: skipped while another runs; a failure warns once and is
        raised by the next :meth:`add_step` (which retries) or :meth:`close`."""
        if self._closed or self._pid != os.getpid() or not self._flush_lock.acquire(blocking=False):
            return
        try:
            self._flush()
        except Exception as exc:  # noqa: BLE001 - this thread must go on; the data stays buffered
            if self._failing_since is None:
                warnings.warn(f"graphviz-autograd: {exc} (retrying every {self.flush_interval} s)",
                              RuntimeWarning, stacklevel=1)
            self._failed()
        else:
            self._failing_since = None
        finally:
            self._flush_lock.release()

    def _failed(self) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()

    def _flush(self) -> None:
        """Take the buffer and write it in one transaction (the caller holds ``_flush_lock``).

        On any failure, Ctrl-C included, whatever was taken goes back in front of the
        buffer and the step bookkeeping is restored, unless the COMMIT went through.
        """
        conn, batch, taken_from, commit_sent = self._conn, None, self._written_max, False
        try:
            with self._lock:
                if not self._buf.empty():
                    batch = self._buf
                    self._buf = Buffer()
                    if batch.max_step is not None:
                        self._written_max = batch.max_step
            if batch is not None:
                rows, opened = chunk_rows(batch, self._open)
                if conn.in_transaction:             # left open by an interrupted flush
                    conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT OR REPLACE INTO incidents VALUES (?, ?, ?, ?, ?)",
                                 list(batch.incidents.values()))
                conn.executemany("INSERT OR REPLACE INTO outliers VALUES (?, ?, ?, ?)",
                                 list(batch.outliers.values()))
                conn.executemany("INSERT INTO graphs VALUES (?, ?, ?, ?, ?)", batch.graphs)
                conn.executemany("INSERT INTO keys VALUES (?, ?, ?)", batch.keys)
                conn.executemany("INSERT OR REPLACE INTO steps VALUES (?, ?, ?)", batch.steps)
                conn.executemany("INSERT OR REPLACE INTO scalars VALUES (?, ?, ?)", batch.scalars)
                conn.executemany(INSERT_CHUNK, rows)
                commit_sent = True
                conn.execute("COMMIT")
                self._open = opened
                self._wal.written()
        except BaseException as exc:
            if commit_sent and not conn.in_transaction and not isinstance(exc, sqlite3.Error):
                self._open = opened         # written after all: interrupted just after COMMIT
                raise
            with suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            if batch is not None:
                with self._lock:            # back in front of what was added meanwhile
                    if self._buf is not batch:
                        self._buf = batch.then(self._buf)
                    self._written_max = taken_from
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot write {len(batch.steps)} buffered steps to {self.path}: "
                                 f"{exc}. Fix: free disk space or restore write access (or end "
                                 f"the program holding a write lock on it), then call flush() "
                                 f"again; the data is kept in memory") from exc
            raise
        if self._wal.missing():
            self._conn = self._wal.repair(self._conn, self._connect)

    # -- closing ------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the flusher, flush and close the file. Calling it again does nothing.

        Raises:
            StoreError: The last flush failed; the data stays buffered and the
                file open: free space and call close() again.
        """
        if self._closed:
            return
        if self._pid != os.getpid():        # a forked child: the parent's file, not ours to close
            self.forked()
            self._closed = True
            return
        if self._flusher is not None:
            self._flusher.stop()
        self.flush()
        with self._flush_lock:
            if self._wal.missing():     # steps only in a deleted -wal: copy them into the store
                self._conn = self._wal.repair(self._conn, self._connect, final=True)
            self._conn.close()
            self._closed = True
        self._file_lock.release()
        flusher.unregister(self)

    def forked(self) -> None:
        """In a forked child: drop the parent's thread, locks and lock file; keep its connection
        unused (closing it here could disturb the parent's)."""
        self._flusher = None
        self._lock, self._flush_lock = threading.Lock(), threading.Lock()
        self._file_lock.forget()
        _INHERITED.append(self._conn)

    def __del__(self) -> None:
        # A writer dropped without close(): write what it buffered (best effort).
        if not getattr(self, "_closed", True):
            with suppress(Exception):
                self.close()


def _json(data: dict, what: str) -> str:
    try:
        return json.dumps(data, allow_nan=True, default=str)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what}: data must be JSON-able ({exc})") from exc
