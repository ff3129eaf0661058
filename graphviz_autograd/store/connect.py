"""Opening a store for reading wherever it lies: beside a live writer, or on read-only media.

A store is an SQLite database in WAL mode. A reader normally shares the writer's
``-wal`` and ``-shm`` files (``mode=ro``: it sees each flush as it lands). Where
those files are absent and cannot be created (a read-only mount, a directory the
reader may not write, a CI artifact), SQLite cannot open the store that way:

- no ``-wal`` (or an empty one): the store file holds every step, so it is
  opened ``immutable=1`` (nothing can be writing it: no writer runs without a log);
- a ``-wal`` holding steps but no usable ``-shm`` (a writer was killed, then the
  files were archived): a private copy of the store and its log, in a temporary
  directory removed at close, is read instead, so no step is missed.

Nothing here writes to or removes any file of the store.

Example:
    >>> opened = open_for_reading(Path("/mnt/archive/run/rank-0.gva.sqlite"))  # doctest: +SKIP
    >>> opened.mode                                                            # doctest: +SKIP
    'immutable'
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import NamedTuple

from graphviz_autograd.errors import StoreError
from graphviz_autograd.store.schema import BUSY_TIMEOUT_S, DAMAGED_FIX
from graphviz_autograd.store.wal import side_files

SHARED, IMMUTABLE, COPY = "shared", "immutable", "copy"
_CANNOT_OPEN = ("SQLITE_CANTOPEN", "SQLITE_READONLY")


class Opened(NamedTuple):
    """A read connection; ``mode`` says how (:data:`SHARED`, :data:`IMMUTABLE`, :data:`COPY`);
    ``copy_dir`` is the temporary directory of a :data:`COPY` (the caller removes it)."""

    conn: sqlite3.Connection
    mode: str
    copy_dir: str | None = None


def open_for_reading(path: Path) -> Opened:
    """Open the store at ``path`` read-only, in the first mode that works here.

    Raises:
        sqlite3.Error: The store cannot be opened in any mode (the caller explains).
    """
    try:
        return Opened(_connect(path, "mode=ro"), SHARED)
    except sqlite3.OperationalError as exc:
        if not (cannot_open(exc) and not os.access(path.parent, os.W_OK) and path.is_file()):
            raise
    wal, _shm = side_files(path)
    if _size(wal) == 0:
        return Opened(_connect(path, "mode=ro&immutable=1"), IMMUTABLE)
    copy_dir = tempfile.mkdtemp(prefix="gva-readonly-")
    try:
        copy = Path(copy_dir) / path.name
        shutil.copyfile(path, copy)         # the store, then its log: SQLite replays the log
        shutil.copyfile(wal, side_files(copy)[0])
        return Opened(_connect(copy, "mode=ro"), COPY, copy_dir)
    except BaseException:
        shutil.rmtree(copy_dir, ignore_errors=True)
        raise


def explain(exc: sqlite3.Error, path: Path, mode: str, doing: str = "cannot read") -> StoreError:
    """What went wrong reading ``path``, in words: a replaced ``-wal``, damage, or SQLite's message."""
    wal, shm = side_files(path)
    if mode == SHARED and (getattr(exc, "sqlite_errorname", "").startswith("SQLITE_IOERR")
                           or wal.exists() != shm.exists()):
        return StoreError(
            f"{doing} run store {path}: {exc}. Its log (the -wal file) does not match its "
            f"index (-shm): most likely the -wal was deleted while a writer had the store "
            f"open. The writer copies its steps into the store and starts a new log at its "
            f"next flush (within its flush_interval); then reads work again. Fix: retry in a "
            f"few seconds; never delete -wal/-shm files of a run being written")
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return StoreError(f"{path} is not a readable graphviz-autograd run store: it is damaged "
                          f"or no SQLite file ({exc}). {DAMAGED_FIX.replace('FILE', str(path))}")
    return StoreError(f"{doing} run store {path}: {exc}")


def _connect(path: Path, query: str) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?{query}", uri=True, isolation_level=None,
                           timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    try:
        conn.execute("PRAGMA user_version").fetchone()     # opens the files: fails here, or works
    except BaseException:
        conn.close()
        raise
    return conn


def cannot_open(exc: sqlite3.Error) -> bool:
    """Whether SQLite could not open (or create) one of the store's files."""
    name = getattr(exc, "sqlite_errorname", "")        # Python >= 3.11
    return name.startswith(_CANNOT_OPEN) or "unable to open database file" in str(exc)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
