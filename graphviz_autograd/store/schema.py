"""The run store's format: file names, tables, statistics, and the checks every open does.

A run directory holds one SQLite file per rank, ``rank-<r>.gva.sqlite`` (WAL mode,
``PRAGMA user_version`` = :data:`STORE_SCHEMA_VERSION`). Nothing is pickled:
graphs and meta values are JSON text, statistics are packed float64 arrays
(``chunks.py``), the rest are numbers. No torch here.

Scalars keep one row per name and step. SQLite stores a bound NaN as NULL, so a
NaN scalar is stored as the text ``'NaN'`` (REAL affinity keeps non-numeric
text) and read back as ``float('nan')``; NULL means "not applicable" and reads as
None. Infinities are ordinary REAL values.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, NamedTuple

from graphviz_autograd.errors import SchemaVersionError, StoreError

STORE_SCHEMA_VERSION = 3     # 3: incidents; 2: statistics in chunks (chunks.py); 1 and 2 are still read
STORE_FORMAT = "graphviz-autograd-run"
STORE_GLOB = "rank-*.gva.sqlite"
STATS = ("grad_norm", "grad_mean", "grad_std", "grad_absmax", "grad_zero_frac", "grad_nan",
         "grad_inf", "param_norm", "update_ratio", "act_mean", "act_std", "act_zero_frac",
         "act_sat_frac")
KINDS = ("param", "node", "module")
# A gathered run (Recorder(ranks="gather"), store/spread.py) adds derived kinds "<kind>@<spread>"
# (over ranks) and "<kind>@rank<r>" (one rank's detail), and the table `outliers`.
SPREADS = ("min", "mean", "max", "min_rank", "max_rank")
MAX_BUFFERED_ROWS = 1_000_000  # flush early past this many buffered stat rows (memory bound)
STAT_SET = frozenset(STATS)
_NAN = "NaN"
BUSY_TIMEOUT_S = 5.0
_RESERVED_META = ("schema_version", "format", "rank", "world_size", "created")
_UPGRADE_FIX = "Fix: upgrade graphviz-autograd (pip install -U graphviz-autograd)"

SCHEMA = f"""
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE graphs(version INTEGER PRIMARY KEY, fingerprint TEXT UNIQUE, first_step INTEGER,
                    n_nodes INTEGER, json TEXT);
CREATE TABLE steps(step INTEGER PRIMARY KEY, wall_time REAL, graph_version INTEGER);
CREATE TABLE scalars(name TEXT, step INTEGER, value REAL, PRIMARY KEY(name, step)) WITHOUT ROWID;
CREATE TABLE keys(id INTEGER PRIMARY KEY, kind TEXT, name TEXT, UNIQUE(kind, name));
CREATE TABLE chunks(id INTEGER PRIMARY KEY, key_id INTEGER, first_step INTEGER, last_step INTEGER,
                    n INTEGER, stride INTEGER, steps BLOB, {", ".join(s + " BLOB" for s in STATS)});
CREATE UNIQUE INDEX chunks_by_key ON chunks(key_id, first_step);
CREATE TABLE incidents(id INTEGER PRIMARY KEY, step INTEGER, kind TEXT, summary TEXT, data TEXT);
CREATE TABLE outliers(step INTEGER, rank INTEGER, why TEXT, data TEXT, PRIMARY KEY(step, rank)) WITHOUT ROWID;
"""
INSERT_CHUNK = (f"INSERT OR REPLACE INTO chunks(key_id, first_step, last_step, n, stride, steps, "
                 f"{', '.join(STATS)}) VALUES ({', '.join('?' * (len(STATS) + 6))})")
ROW_WIDTH = len(STATS) + 1   # a buffered row: step, then its statistics
CHUNK_MIN = 128   # a key's last chunk is rewritten, grown, until it holds this many steps
CHUNK_MAX = 1024  # longer runs of buffered steps are split: reading a late column skips less


class Series(NamedTuple):
    """One value per step, ordered by step."""

    steps: list[int]
    values: list[float]


class Incident(NamedTuple):
    """A step where training broke (see ``record/incidents.py``), as the store keeps it.

    ``kind`` is ``"nonfinite"``, ``"spike"`` or ``"explosion"``; ``values`` the numbers that
    triggered it; ``nodes`` ids in the graph version of that step; ``detail_steps`` the steps
    captured in detail after it; ``origin`` where the first non-finite value came from
    (``op``, ``module``, ``source``, ``operands``) when found.
    """

    step: int
    kind: str
    summary: str
    values: dict
    nodes: tuple[str, ...] = ()
    detail_steps: tuple[int, ...] = ()
    origin: dict | None = None


class GraphVersion(NamedTuple):
    """One distinct graph structure recorded during the run."""

    version: int
    fingerprint: str
    first_step: int
    n_nodes: int


def store_filename(rank: int) -> str:
    """File name of the store of ``rank`` inside a run directory."""
    return f"rank-{rank}.gva.sqlite"


def encode(value: Any) -> float | str | None:
    """Number to what we bind in SQLite: NaN becomes ``'NaN'``, None stays NULL."""
    if value is None:
        return None
    value = float(value)
    return _NAN if value != value else value


def stat_value(value: Any) -> float | None:
    """A statistic as stored in a chunk: a float (NaN and inf included) or None."""
    return None if value is None else float(value)


def decode(value: float | str | None) -> float | None:
    return value if value is None or value.__class__ is float else float(value)


def check_stat(stat: str) -> str:
    if stat not in STAT_SET:
        raise StoreError(f"unknown stat {stat!r}; valid stats: {', '.join(STATS)}")
    return stat


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        base, at, suffix = kind.partition("@") if isinstance(kind, str) else ("", "", "")
        derived = suffix in SPREADS or (suffix[:4] == "rank" and suffix[4:].isdigit())
        if not (at and base in KINDS and derived):
            raise StoreError(f"unknown key kind {kind!r}; valid kinds: {', '.join(KINDS)}, or "
                             f"'<kind>@<{'|'.join(SPREADS)}>' and '<kind>@rank<r>' in a gathered run")
    return kind


def remove_store_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


class Closing:
    """Context manager support: ``with ... as x`` closes ``x`` at the end."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def meta_rows(meta: dict[str, Any], rank: int, world_size: int) -> list[tuple[str, str]]:
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


def check_store(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
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


