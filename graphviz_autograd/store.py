"""Run store: per-step training records in SQLite, written and read live.

Each process (rank) writes ``<run_dir>/rank-<r>.gva.sqlite`` with :class:`RunWriter`;
dashboards in other processes read it with :func:`open_run` meanwhile. SQLite in
WAL mode: readers never block the writer and see whole flushes only (never half a
step); a writer killed by SIGKILL loses only what it had not flushed. Nothing is
pickled: graphs and meta values are JSON text, the rest are numbers. No torch here.

Statistics are stored in *chunks* (see ``_chunks.py``): one row per key holds a
run of steps as packed arrays, so a flush writes one row per key and reading one
key's series over 100,000 steps reads a few hundred rows (schema 2; stores of
schema 1, one row per key and step, are still read). Steps must increase past
what a flush has written; a step still buffered may be added again to replace it.

Scalars keep one row per name and step. SQLite stores a bound NaN as NULL, so a
NaN scalar is stored as the text ``'NaN'`` (REAL affinity keeps non-numeric
text) and read back as ``float('nan')``; NULL means "not applicable" and reads as
None. Infinities are ordinary REAL values.

Example:
    >>> with RunWriter("runs/demo") as w:  # doctest: +SKIP
    ...     w.add_step(0, wall_time=time.time(), graph_version=None, scalars={"loss": 2.3},
    ...                stats={"param": [("fc.weight", {"grad_norm": 0.1})]})
    >>> open_run("runs/demo").loss()  # doctest: +SKIP
    Series(steps=[0], values=[2.3])
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from graphviz_autograd import _chunks
from graphviz_autograd.errors import RunNotFoundError, SchemaVersionError, StoreError

STORE_SCHEMA_VERSION = 2     # 2: statistics in chunks (_chunks.py); 1 (one row per key and step) is still read
STORE_FORMAT = "graphviz-autograd-run"
STORE_GLOB = "rank-*.gva.sqlite"
STATS = ("grad_norm", "grad_mean", "grad_std", "grad_absmax", "grad_zero_frac", "grad_nan",
         "grad_inf", "param_norm", "update_ratio", "act_mean", "act_std", "act_zero_frac",
         "act_sat_frac")
KINDS = ("param", "node", "module")
MAX_BUFFERED_ROWS = 1_000_000  # flush early past this many buffered stat rows (memory bound)
_STAT_SET = frozenset(STATS)
_NAN = "NaN"
_BUSY_TIMEOUT_S = 5.0
_RESERVED_META = ("schema_version", "format", "rank", "world_size", "created")
_UPGRADE_FIX = "Fix: upgrade graphviz-autograd (pip install -U graphviz-autograd)"

_SCHEMA = f"""
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE graphs(version INTEGER PRIMARY KEY, fingerprint TEXT UNIQUE, first_step INTEGER,
                    n_nodes INTEGER, json TEXT);
CREATE TABLE steps(step INTEGER PRIMARY KEY, wall_time REAL, graph_version INTEGER);
CREATE TABLE scalars(name TEXT, step INTEGER, value REAL, PRIMARY KEY(name, step)) WITHOUT ROWID;
CREATE TABLE keys(id INTEGER PRIMARY KEY, kind TEXT, name TEXT, UNIQUE(kind, name));
CREATE TABLE chunks(id INTEGER PRIMARY KEY, key_id INTEGER, first_step INTEGER, last_step INTEGER,
                    n INTEGER, stride INTEGER, steps BLOB, {", ".join(s + " BLOB" for s in STATS)});
CREATE UNIQUE INDEX chunks_by_key ON chunks(key_id, first_step);
"""
_INSERT_CHUNK = (f"INSERT OR REPLACE INTO chunks(key_id, first_step, last_step, n, stride, steps, "
                 f"{', '.join(STATS)}) VALUES ({', '.join('?' * (len(STATS) + 6))})")
_WIDTH = len(STATS) + 1   # a buffered row: step, then its statistics
CHUNK_MIN = 128   # a key's last chunk is rewritten, grown, until it holds this many steps
CHUNK_MAX = 1024  # longer runs of buffered steps are split: reading a late column skips less


class Series(NamedTuple):
    """One value per step, ordered by step."""

    steps: list[int]
    values: list[float]


class GraphVersion(NamedTuple):
    """One distinct graph structure recorded during the run."""

    version: int
    fingerprint: str
    first_step: int
    n_nodes: int


def store_filename(rank: int) -> str:
    """File name of the store of ``rank`` inside a run directory."""
    return f"rank-{rank}.gva.sqlite"


def _encode(value: Any) -> float | str | None:
    """Number to what we bind in SQLite: NaN becomes ``'NaN'``, None stays NULL."""
    if value is None:
        return None
    value = float(value)
    return _NAN if value != value else value


def _stat_value(value: Any) -> float | None:
    """A statistic as stored in a chunk: a float (NaN and inf included) or None."""
    return None if value is None else float(value)


def _decode(value: float | str | None) -> float | None:
    return value if value is None or value.__class__ is float else float(value)


def _check_stat(stat: str) -> str:
    if stat not in _STAT_SET:
        raise StoreError(f"unknown stat {stat!r}; valid stats: {', '.join(STATS)}")
    return stat


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise StoreError(f"unknown key kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    return kind


def _remove_store_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


class _Closing:
    """Context manager support: ``with ... as x`` closes ``x`` at the end."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _meta_rows(meta: dict[str, Any], rank: int, world_size: int) -> list[tuple[str, str]]:
    """The meta table rows: our keys plus the caller's, values as JSON text."""
    clash = sorted(set(meta) & set(_RESERVED_META))
    if clash:
        raise StoreError(f"meta keys {clash} are reserved ({', '.join(_RESERVED_META)}); rename them")
    info = {"schema_version": STORE_SCHEMA_VERSION, "format": STORE_FORMAT, "rank": rank,
            "world_size": world_size, "created": time.time(), **meta}
    try:
        return [(str(key), json.dumps(value)) for key, value in info.items()]
    except (TypeError, ValueError) as exc:
        raise StoreError(f"run meta must be JSON-serializable: {exc}. Fix: convert values to "
                         f"str, numbers, lists or dicts") from exc


def _check_store(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """Validate an open store and return its meta; raise a clear error if it is not ours."""
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > STORE_SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{path} has store schema version {version}, but this graphviz-autograd reads "
                f"version {STORE_SCHEMA_VERSION} at most. {_UPGRADE_FIX}.")
        meta = {key: json.loads(value) for key, value in conn.execute("SELECT key, value FROM meta")}
    except (sqlite3.DatabaseError, ValueError) as exc:
        raise StoreError(f"{path} is not a readable graphviz-autograd run store ({exc}). Fix: point "
                         f"at a run directory written by RunWriter, or delete the file") from exc
    if version < 1 or meta.get("format") != STORE_FORMAT:
        raise StoreError(f"{path} is an SQLite file but not a graphviz-autograd run store "
                         f"(format={meta.get('format')!r}). Fix: delete it or use another run dir")
    return meta


class RunWriter(_Closing):
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
        meta_rows = _meta_rows(meta or {}, rank, world_size)  # before anything is deleted
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create run directory {self.run_dir}: {exc}. Fix: pass a run_dir "
                             f"in a writable location (its parents must be directories)") from exc
        self._clear_existing(overwrite)
        self._create(meta_rows)
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=_BUSY_TIMEOUT_S,
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
                _check_store(conn, self.path)
                has_steps = conn.execute("SELECT 1 FROM steps LIMIT 1").fetchone() is not None
            finally:
                conn.close()
            if has_steps:
                raise StoreError(f"run directory {self.run_dir} already holds a run ({self.path}). "
                                 f"Fix: pass overwrite=True to replace it, or choose another run dir")
        try:
            _remove_store_files(self.path)
        except OSError as exc:
            raise StoreError(f"cannot remove old run store {self.path}: {exc}") from exc

    def _create(self, meta_rows: list[tuple[str, str]]) -> None:
        """Build the schema in a temporary file and move it in, so readers never see half of it."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            _remove_store_files(tmp)
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={STORE_SCHEMA_VERSION};")
                conn.executemany("INSERT INTO meta VALUES (?, ?)", meta_rows)
                conn.execute("COMMIT")
            finally:
                conn.close()
            os.replace(tmp, self.path)
        except (sqlite3.Error, OSError) as exc:
            with suppress(OSError):
                _remove_store_files(tmp)   # do not leave a half-built file on a full disk
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
            scalar_rows = [(name, step, _encode(value)) for name, value in scalars.items()]
        except (TypeError, ValueError) as exc:
            raise StoreError(f"step {step}: scalar values must be numbers or None ({exc})") from exc
        staged: list[list] = []         # the pending lists this step appended to, for a rollback
        try:
            for kind, entries in (stats or {}).items():
                self._stat_rows(_check_kind(kind), entries, step, staged)
        except BaseException:
            for rows in staged:
                del rows[-_WIDTH:]
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
                if len(values) != _WIDTH - 1:
                    raise StoreError(f"step {step}, {kind} {name!r}: a tuple of stats needs one value "
                                     f"per STATS entry ({_WIDTH - 1}), got {len(values)}")
                row = values
            elif not values.keys() <= _STAT_SET:
                raise StoreError(f"unknown stat names {sorted(set(values) - _STAT_SET)} for {kind} "
                                 f"{name!r}; valid stats: {', '.join(STATS)}")
            else:
                row = tuple(map(values.get, STATS))
            try:  # fast check: all numbers (or None), else convert value by value
                clean = sum(filter(None, row), 0.0).__class__ is float
            except TypeError:
                clean = False
            if not clean:
                try:
                    row = tuple(map(_stat_value, row))
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
        if self._steps or self._graphs or self._keys:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT INTO graphs VALUES (?, ?, ?, ?, ?)", self._graphs)
                conn.executemany("INSERT INTO keys VALUES (?, ?, ?)", self._keys)
                conn.executemany("INSERT OR REPLACE INTO steps VALUES (?, ?, ?)", self._steps)
                conn.executemany("INSERT OR REPLACE INTO scalars VALUES (?, ?, ?)", self._scalars)
                chunks, opened = self._chunk_rows()
                conn.executemany(_INSERT_CHUNK, chunks)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise StoreError(f"cannot write {len(self._steps)} buffered steps to {self.path}: "
                                 f"{exc}. Fix: free disk space or restore write access, then call "
                                 f"flush() again; the data is kept in memory") from exc
            if self._steps:
                self._written_max = max(row[0] for row in self._steps)
            for buffer in (self._graphs, self._keys, self._steps, self._scalars, self._pending):
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
                latest = {rows[i]: rows[i + 1:i + _WIDTH] for i in range(0, len(rows), _WIDTH)}
                rows = [x for step in sorted(latest) for x in (step, *latest[step])]
            for first in range(0, len(rows), CHUNK_MAX * _WIDTH):
                part = rows[first:first + CHUNK_MAX * _WIDTH]
                steps = part[::_WIDTH]
                out.append((key_id, steps[0], steps[-1], len(steps), _chunks.stride_of(steps),
                            _chunks.pack_steps(steps),
                            *(_chunks.pack_values(part[k::_WIDTH]) for k in range(1, _WIDTH))))
            if len(part) < CHUNK_MIN * _WIDTH:
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


class RankReader(_Closing):
    """Read-only view of one rank's store, cheap to poll while the writer writes.

    The connection stays open; each public method sees one consistent snapshot.
    Methods may be called from several threads (they are serialized).

    Raises:
        StoreError: The file is not a run store (SchemaVersionError: a newer one).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True,
                                         isolation_level=None, timeout=_BUSY_TIMEOUT_S,
                                         check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open run store {self.path}: {exc}") from exc
        try:
            self.meta: dict[str, Any] = _check_store(self._conn, self.path)
        except StoreError:
            self._conn.close()
            raise
        self.rank: int = int(self.meta.get("rank", 0))
        self._chunked = int(self.meta.get("schema_version", 1)) >= 2
        self._graph_json: dict[int, str] = {}
        self._graphs: dict[int, Any] = {}
        self._key_ids: dict[tuple[str, str], int] = {}
        self._max_key_id = 0

    def _fetch(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read run store {self.path}: {exc}") from exc

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Run several queries against one snapshot (one read transaction)."""
        with self._lock:
            self._fetch("BEGIN")
            try:
                yield
            finally:
                self._conn.execute("COMMIT")

    def _refresh_keys(self) -> None:
        for key_id, kind, name in self._fetch("SELECT id, kind, name FROM keys WHERE id > ? "
                                              "ORDER BY id", (self._max_key_id,)):
            self._key_ids[(kind, name)] = self._max_key_id = key_id

    def _key_id(self, kind: str, name: str) -> int | None:
        key = (_check_kind(kind), name)
        if key not in self._key_ids:
            self._refresh_keys()
        return self._key_ids.get(key)

    def steps(self) -> list[int]:
        """All recorded steps, ascending."""
        return [row[0] for row in self._fetch("SELECT step FROM steps ORDER BY step")]

    def latest_step(self) -> int | None:
        """Highest recorded step, or None before the first flush."""
        return self._fetch("SELECT max(step) FROM steps")[0][0]

    def scalar_names(self) -> list[str]:
        """Names of the recorded scalars, sorted."""
        rows = self._fetch(  # skip-scan over the primary key: one lookup per name, not per row
            "WITH RECURSIVE n(name) AS (SELECT min(name) FROM scalars UNION ALL "
            "SELECT (SELECT min(name) FROM scalars WHERE name > n.name) FROM n "
            "WHERE n.name IS NOT NULL) SELECT name FROM n WHERE name IS NOT NULL")
        return [row[0] for row in rows]

    def series(self, name: str) -> Series:
        """Values of scalar ``name`` by step (steps where it is None are skipped)."""
        return _to_series(self._fetch("SELECT step, value FROM scalars WHERE name = ? "
                                      "AND value IS NOT NULL ORDER BY step", (name,)))

    def scalar_at(self, name: str, step: int) -> float | None:
        """Scalar ``name`` at ``step`` (None when it was not logged there)."""
        rows = self._fetch("SELECT value FROM scalars WHERE name = ? AND step = ?", (name, step))
        return _decode(rows[0][0]) if rows else None

    def loss(self) -> Series:
        """The ``loss`` scalar by step."""
        return self.series("loss")

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
                raise StoreError(f"no graph recorded yet in {self.path}")
        return version

    def graph_json(self, version: int | None = None) -> str:
        """JSON text of graph ``version`` (the latest when None); cached per version."""
        version = self._resolve_version(version)
        text = self._graph_json.get(version)
        if text is None:
            rows = self._fetch("SELECT json FROM graphs WHERE version = ?", (version,))
            if not rows:
                known = [v.version for v in self.graph_versions()]
                raise StoreError(f"no graph version {version} in {self.path}; available: {known}")
            text = self._graph_json[version] = rows[0][0]
        return text

    def graph(self, version: int | None = None) -> Any:
        """Graph ``version`` (latest when None) as a :class:`graphviz_autograd.model.Graph`."""
        from graphviz_autograd.export.serialize import from_json  # noqa: PLC0415 (lazy)

        version = self._resolve_version(version)
        if version not in self._graphs:
            self._graphs[version] = from_json(self.graph_json(version))
        return self._graphs[version]

    def graph_at(self, step: int) -> Any:
        """Graph in use at ``step``, or None when no graph was recorded by then."""
        version = self.version_at(step)
        return None if version is None else self.graph(version)

    def keys(self, kind: str) -> list[str]:
        """Names of the keys of ``kind`` ('param', 'node' or 'module'), in first-seen order."""
        rows = self._fetch("SELECT name FROM keys WHERE kind = ? ORDER BY id", (_check_kind(kind),))
        return [row[0] for row in rows]

    def has_key(self, kind: str, name: str) -> bool:
        """Whether any stats were recorded for ``name`` of ``kind``."""
        return self._key_id(kind, name) is not None

    def _stat_series(self, kind: str, name: str, stat: str) -> Series:
        column = _check_stat(stat)
        key_id = self._key_id(kind, name)
        if key_id is None:
            return Series([], [])
        if not self._chunked:       # schema 1: one row per key and step
            return _to_series(self._fetch(f"SELECT step, {column} FROM stats WHERE key_id = ? "
                                          f"AND {column} IS NOT NULL ORDER BY step", (key_id,)))
        return Series(*_chunks.series_of(self._fetch(
            f"SELECT steps, {column} FROM chunks WHERE key_id = ? AND {column} IS NOT NULL "
            f"ORDER BY first_step", (key_id,))))

    def node_series(self, node_id: str, stat: str = "grad_norm") -> Series:
        """``stat`` of graph node ``node_id`` by step (empty for an unknown node)."""
        return self._stat_series("node", node_id, stat)

    def param_series(self, name: str, stat: str = "grad_norm") -> Series:
        """``stat`` of parameter ``name`` by step."""
        return self._stat_series("param", name, stat)

    def module_series(self, name: str, stat: str = "act_mean") -> Series:
        """``stat`` of module ``name`` by step."""
        return self._stat_series("module", name, stat)

    def stats_at(self, step: int, kind: str = "node", stat: str = "grad_norm") -> dict[str, float]:
        """``stat`` of every key of ``kind`` at ``step``; keys where it is None are left out."""
        return self.stats_table_at(step, kind, (stat,))[stat]

    def stats_table_at(self, step: int, kind: str = "node",
                       stats: tuple[str, ...] = ("grad_norm",)) -> dict[str, dict[str, float]]:
        """``{stat: {key: value}}`` for every key of ``kind`` at ``step``, in one query."""
        columns, kind = [_check_stat(stat) for stat in stats], _check_kind(kind)
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
                        out[stat][name] = _decode(value)
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
            i = 0 if stride else _chunks.index_of(steps_blob, step)
            if i is None:
                continue
            for stat, blob in zip(stats, blobs):
                if blob is not None:
                    value = _chunks.value_at(blob, i)
                    if value is not None:
                        out[stat][name] = value
        return out

    def matrix(self, kind: str, stat: str, keys: list[str] | None = None,
               max_steps: int | None = None) -> tuple[list[str], list[int], list[list[float | None]]]:
        """``stat`` as a keys x steps grid, for heat maps.

        Args:
            kind: 'param', 'node' or 'module'.
            stat: One of :data:`STATS`.
            keys: Row keys (default: all keys of ``kind``).
            max_steps: Keep at most this many steps, evenly spaced, first and last included.

        Returns:
            ``(keys, steps, grid)`` with ``grid[i][j]`` the value of ``keys[i]`` at
            ``steps[j]``, or None where nothing was recorded.
        """
        column, kind = _check_stat(stat), _check_kind(kind)
        with self._snapshot():
            names = self.keys(kind) if keys is None else list(keys)
            all_steps = self.steps()
            steps = _downsample(all_steps, max_steps)
            grid: list[list[float | None]] = [[None] * len(steps) for _ in names]
            position = {step: j for j, step in enumerate(steps)}
            sampled = len(steps) < len(all_steps)
            for row, name in zip(grid, names):
                key_id = self._key_id(kind, name)
                if key_id is None or not steps:
                    continue
                if self._chunked:
                    for step, value in zip(*self._stat_series(kind, name, stat)):
                        j = position.get(step)
                        if j is not None:
                            row[j] = value
                    continue
                sql = f"SELECT step, {column} FROM stats WHERE key_id = ?"
                chunks = [steps[i:i + 500] for i in range(0, len(steps), 500)] if sampled else [[]]
                for chunk in chunks:
                    where = f" AND step IN ({', '.join('?' * len(chunk))})" if chunk else ""
                    for step, value in self._fetch(sql + where, (key_id, *chunk)):
                        j = position.get(step)
                        if j is not None:
                            row[j] = _decode(value)
        return names, steps, grid

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


def _to_series(rows: list[tuple]) -> Series:
    return Series([row[0] for row in rows],
                  [v if v.__class__ is float else float(v) for _, v in rows])


def _downsample(steps: list[int], max_steps: int | None) -> list[int]:
    """At most ``max_steps`` evenly spaced items of ``steps``, first and last included."""
    n = len(steps)
    if max_steps is None or n <= max_steps:
        return steps
    if max_steps < 1:
        raise StoreError(f"max_steps must be >= 1 or None, got {max_steps}")
    if max_steps == 1:
        return [steps[-1]]
    return [steps[round(i * (n - 1) / (max_steps - 1))] for i in range(max_steps)]


def _scan_ranks(run_dir: Path) -> dict[int, Path]:
    found = {}
    for file in run_dir.glob(STORE_GLOB):
        rank = file.name[len("rank-"):-len(".gva.sqlite")]
        if rank.isdigit():
            found[int(rank)] = file
    return dict(sorted(found.items()))


_DELEGATED = frozenset({"steps", "latest_step", "scalar_names", "series", "loss", "graph_versions",
                        "version_at", "graph_json", "graph", "graph_at", "keys", "has_key",
                        "node_series", "param_series", "module_series", "stats_at", "stats_table_at",
                        "scalar_at", "matrix"})


class Run(_Closing):
    """A run directory (or a single store file) holding one store per rank.

    Every :class:`RankReader` query method (``run.loss()``, ``run.matrix(...)``,
    ...) also works here and reads the lowest rank; :meth:`rank` gives the others.
    """

    def __init__(self, path: Path, single: RankReader | None = None) -> None:
        self.path = path
        self._single = single is not None  # opened on one file rather than a run dir
        self._readers: dict[int, RankReader] = {single.rank: single} if single else {}
        self._primary = single or self.rank(self.ranks[0])

    @property
    def ranks(self) -> list[int]:
        """Ranks with a store, ascending (rescanned, so late ranks appear)."""
        return list(self._readers) if self._single else list(_scan_ranks(self.path))

    @property
    def meta(self) -> dict[str, Any]:
        """Meta of the lowest rank (rank 0 normally)."""
        return self._primary.meta

    @property
    def world_size(self) -> int:
        """Number of ranks the run was started with."""
        return int(self.meta.get("world_size", len(self.ranks)))

    def rank(self, r: int) -> RankReader:
        """Reader of rank ``r``. Raises StoreError listing the available ranks."""
        if r not in self._readers:
            files = {} if self._single else _scan_ranks(self.path)
            if r not in files:
                raise StoreError(f"no rank {r} in {self.path}; available ranks: {self.ranks}")
            self._readers[r] = RankReader(files[r])
        return self._readers[r]

    def close(self) -> None:
        """Close every open rank reader."""
        for reader in self._readers.values():
            reader.close()

    def __getattr__(self, name: str) -> Any:
        """The RankReader query methods (steps, series, matrix, ...), on the lowest rank."""
        if name in _DELEGATED:
            return getattr(self._primary, name)
        raise AttributeError(f"'Run' object has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | _DELEGATED)


def open_run(path: str | os.PathLike) -> Run:
    """Open a run for reading: a run directory, or one ``.gva.sqlite`` file.

    Raises:
        RunNotFoundError: No store at ``path``.
        SchemaVersionError: A store was written by a newer graphviz-autograd.
        StoreError: A store file is damaged or not a run store.
    """
    path = Path(path)
    if path.is_file():
        return Run(path, RankReader(path))
    if not path.is_dir():
        raise RunNotFoundError(f"no run at {path}: it does not exist. Looked for a run directory "
                               f"holding {STORE_GLOB} files, or a single .gva.sqlite file")
    if not _scan_ranks(path):
        raise RunNotFoundError(f"no run store in {path}: looked for {STORE_GLOB} files. Fix: pass "
                               f"the run directory the recorder wrote to")
    return Run(path)
