"""A store's ``-wal`` or ``-shm`` file deleted while it is written (a cleanup job, ``rm *-wal``).

SQLite keeps writing to the deleted file through its open descriptor, so the writer
is fine, but a reader opening the store afterwards sees an index of a log that is
not there ("disk I/O error"), and the steps in the deleted log would be lost when
the writer closes while a reader still has the store open. The writer repairs it
after its next flush: it copies the whole log into the store file (a ``TRUNCATE``
checkpoint) and reconnects, which starts a new ``-wal``; readers reopen and see
every step again (``reader.py``).

Example:
    >>> guard = WalGuard(Path("runs/demo/rank-0.gva.sqlite"))    # doctest: +SKIP
    >>> if guard.missing():                                      # doctest: +SKIP
    ...     conn = guard.repair(conn, connect)
"""
from __future__ import annotations

import os
import sqlite3
import warnings
from contextlib import suppress
from pathlib import Path
from typing import Callable

from graphviz_autograd.store.schema import BUSY_TIMEOUT_S

REPAIR_WAIT_S = 0.2     # wait this long for readers to finish a read, else retry at the next flush


def side_identity(path: Path) -> tuple:
    """``(device, inode)`` of the ``-wal`` and ``-shm`` files of ``path`` (None: absent)."""
    return tuple(map(_identity, side_files(path)))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def side_files(path: Path) -> tuple[Path, Path]:
    """The ``-wal`` and ``-shm`` files of the store at ``path``."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


class WalGuard:
    """Notices a deleted (or replaced) ``-wal``/``-shm`` of the store at ``path``.

    A reader opening the store after the deletion creates an empty ``-wal`` of its
    own, so the files are compared by identity (device and inode), recorded after
    the writer's first write on each connection.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.wal, self.shm = side_files(path)
        self.known: tuple | None = None     # identities of our -wal and -shm (None: not written yet)
        self.store = None                   # identity of the store file itself
        self.warned = False
        self.lost = False                   # the store file itself was deleted: nothing to repair

    def written(self) -> None:
        """Call after each write: the first one on a connection records the files it uses."""
        if self.known is None:
            self.known = side_identity(self.path)
            self.store = self.store or _identity(self.path)

    def missing(self) -> bool:
        return self.known is not None and not self.lost and side_identity(self.path) != self.known


    def repair(self, conn: sqlite3.Connection, connect: Callable[[], sqlite3.Connection],
               final: bool = False) -> sqlite3.Connection:
        """Copy the log into the store file, then reconnect; return the connection to use.

        When readers are in the middle of a read the copy cannot finish: the old
        connection is returned and the next flush tries again (``final``: at close,
        wait as long as any write would).
        """
        if _identity(self.path) != self.store:     # the whole store went (rm -r of the run)
            self.lost = True
            warnings.warn(f"graphviz-autograd: the run store {self.path} was deleted or replaced "
                          f"while it was written; the steps from now on cannot be read. Fix: "
                          f"start a new Recorder (in another run_dir)", RuntimeWarning, stacklevel=3)
            return conn
        try:
            if not final:
                conn.execute(f"PRAGMA busy_timeout={int(REPAIR_WAIT_S * 1000)}")
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error:
            busy = 1
        finally:
            with suppress(sqlite3.Error):
                conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        if busy:
            if final:
                warnings.warn(f"graphviz-autograd: the -wal file of {self.path} was deleted and "
                              f"readers kept it busy: the last steps may be missing from the "
                              f"store. Fix: do not delete -wal/-shm files of a run being written",
                              RuntimeWarning, stacklevel=3)
            return conn
        if not self.warned:
            self.warned = True
            warnings.warn(f"graphviz-autograd: the -wal/-shm file of {self.path} was deleted while "
                          f"the run was written; every step so far was copied into the store "
                          f"file and a new log started, so readers see all steps again. Fix: do "
                          f"not delete -wal/-shm files of a run being written", RuntimeWarning,
                          stacklevel=3)
        self.known = None           # the new connection's files are recorded at its first write
        if final:
            return conn
        conn.close()
        return connect()
