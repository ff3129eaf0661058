"""A store's files: refusing to replace a run, and building a new store so readers never see
half of it (the writer holds the store's lock while these run).

Example:
    >>> clear_existing(Path("runs/demo/rank-0.gva.sqlite"), overwrite=False)   # doctest: +SKIP
    >>> create(Path("runs/demo/rank-0.gva.sqlite"), meta_rows({}, 0, 1))      # doctest: +SKIP
"""
from __future__ import annotations

import os
import sqlite3
from contextlib import suppress
from pathlib import Path

from graphviz_autograd.errors import StoreError
from graphviz_autograd.store.schema import SCHEMA, STORE_SCHEMA_VERSION, check_store


def remove_store_files(path: Path) -> None:
    """Remove the store at ``path`` and its -wal and -shm (only ever with its lock held)."""
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def clear_existing(path: Path, overwrite: bool) -> None:
    """Delete an old store of this rank if allowed, else explain why we stop."""
    if path.exists() and not overwrite:
        try:
            conn = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open existing run store {path}: {exc}") from exc
        try:
            check_store(conn, path)
            has_steps = conn.execute("SELECT 1 FROM steps LIMIT 1").fetchone() is not None
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read existing run store {path}: {exc}. Fix: use "
                             f"another run_dir, or pass overwrite=True to replace it") from exc
        finally:
            conn.close()
        if has_steps:
            raise StoreError(f"run directory {path.parent} already holds a run ({path}). "
                             f"Fix: pass overwrite=True to replace it, or choose another run dir")
    try:
        remove_store_files(path)
    except OSError as exc:
        raise StoreError(f"cannot remove old run store {path}: {exc}") from exc


def create(path: Path, meta_rows: list[tuple[str, str]]) -> None:
    """Build the schema in a temporary file and move it in, so readers never see half of it."""
    tmp = path.with_name(path.name + ".tmp")
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
        os.replace(tmp, path)
    except (sqlite3.Error, OSError) as exc:
        with suppress(OSError):
            remove_store_files(tmp)   # do not leave a half-built file on a full disk
        raise StoreError(f"cannot create run store {path}: {exc}. Fix: make sure "
                         f"{path.parent} is writable and the disk has free space") from exc
