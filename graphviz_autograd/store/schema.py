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

import functools
import json
import sqlite3
import struct
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
    """A stored scalar back to a float (``'NaN'`` -> NaN); Damaged for anything else."""
    if value is None or value.__class__ is float:
        return value
    if value == _NAN or value.__class__ is int:
        return float(value)
    raise Damaged(f"a scalar value is {type(value).__name__} {value!r:.40}, not a number")


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
        return [(text(str(key), "meta key"), json.dumps(value)) for key, value in info.items()]
    except (TypeError, ValueError, RecursionError) as exc:
        raise StoreError(f"run meta must be JSON-serializable: {exc}. Fix: convert values to "
                         f"str, numbers, lists or dicts") from exc


class Damaged(ValueError):
    """Stored data that cannot be decoded (raised inside the store; readers turn it into a
    :class:`StoreError` naming the file)."""


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def int64(value: Any, what: str) -> int:
    """``value`` as an int that SQLite and the packed steps can hold, else a StoreError naming it."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise StoreError(f"{what} must be an integer, got {_short(value)}")
    value = value.__index__()
    if not INT64_MIN <= value <= INT64_MAX:
        raise StoreError(f"{what}={_short(value)} does not fit a signed 64-bit integer (|value| < 2**63). "
                         f"Fix: number steps from 0 upwards (a global step counter)")
    return value


def float64(value: Any, what: str) -> float:
    """``value`` as a float, else a StoreError naming it (``10**400`` overflows, ``'x'`` is no number)."""
    try:
        return float(value)
    except OverflowError:
        raise StoreError(f"{what}: {_short(value)} is too large for a float64 (|value| < 1.8e308). "
                         f"Fix: log a smaller value, e.g. its logarithm") from None
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} must be a number or None, got {_short(value)} ({exc})") from None


def text(value: Any, what: str) -> str:
    """``value`` as text SQLite can store (a str encodable as UTF-8), else a StoreError."""
    if not isinstance(value, str):
        raise StoreError(f"{what} must be a str, got {type(value).__name__} {_short(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StoreError(f"{what} {value!r:.80} cannot be stored as UTF-8 text ({exc.reason} at "
                         f"position {exc.start}). Fix: remove lone surrogates from the name") from None
    return value


def _short(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10 ** 30:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        shown = repr(value)
    except Exception:  # noqa: BLE001 - a hostile repr
        shown = f"<{type(value).__name__} object>"
    return shown if len(shown) <= 80 else shown[:77] + "..."


DAMAGED_FIX = ("Fix: if it is a copy, copy it again, else restore it from a backup (see the damage "
               "with: sqlite3 FILE 'PRAGMA integrity_check'); a file that is no run store: open "
               "a run directory the recorder wrote")


def read_meta(conn: sqlite3.Connection, path: Path) -> tuple[int, dict[str, Any]]:
    """``(user_version, meta)`` of an open store; Damaged for meta rows that cannot be ours."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    meta: dict[str, Any] = {}
    if version > STORE_SCHEMA_VERSION:
        return version, meta
    for key, value in conn.execute("SELECT key, value FROM meta"):
        if not isinstance(key, str) or not isinstance(value, str):
            raise Damaged(f"its meta row {key!r:.40} holds {type(value).__name__} "
                          f"{value!r:.40} where JSON text belongs")
        try:
            meta[key] = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise Damaged(f"its meta value of {key!r:.40} is not JSON ({type(exc).__name__})") from None
    for key in ("schema_version", "rank", "world_size"):
        if key in meta and (isinstance(meta[key], bool) or not isinstance(meta[key], int)):
            raise Damaged(f"its meta {key} is {meta[key]!r:.40}, not an integer")
    return version, meta


def check_store(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """Validate an open store and return its meta; raise a clear error if it is not ours."""
    try:
        version, meta = read_meta(conn, path)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a readable graphviz-autograd run store ({exc}). "
                         f"{DAMAGED_FIX.replace('FILE', str(path))}") from exc
    except Damaged as exc:
        raise StoreError(f"{path} is not a readable graphviz-autograd run store: {exc}. "
                         f"{DAMAGED_FIX.replace('FILE', str(path))}") from exc
    if version > STORE_SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path} has store schema version {version}, but this graphviz-autograd reads "
            f"version {STORE_SCHEMA_VERSION} at most. {_UPGRADE_FIX}.")
    if version < 1 or meta.get("format") != STORE_FORMAT:
        raise StoreError(f"{path} is an SQLite file but not a graphviz-autograd run store "
                         f"(format={meta.get('format')!r:.60}). Fix: use another run directory, or "
                         f"move that file away")
    return meta


# Reading a stored value that cannot be decoded: these, from any public method, mean damage.
_DECODE_ERRORS = (Damaged, ValueError, TypeError, struct.error, RecursionError, OverflowError,
                  IndexError, KeyError)


def typed_reads(method):
    """``method`` raising :class:`StoreError` (naming the file) for any damage it meets."""
    @functools.wraps(method)
    def read(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StoreError:
            raise
        except _DECODE_ERRORS as exc:
            what = str(exc) if isinstance(exc, Damaged) else (
                f"{method.__name__}() met a stored value it cannot decode: {type(exc).__name__}: "
                f"{str(exc)[:200]}")
            raise StoreError(f"cannot read run store {self.file}: it is damaged: {what}. "
                             f"{DAMAGED_FIX.replace('FILE', str(self.file))}") from exc
    return read
