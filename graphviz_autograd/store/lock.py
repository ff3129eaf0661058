"""One writer per store file: an exclusive lock held while a :class:`RunWriter` writes.

``rank-<r>.gva.sqlite.lock`` beside the store is locked with ``flock`` and names its
holder (pid, host, start time) for the message a refused second writer gets. The
kernel releases the lock when its process ends, however it ends, so a lock file
left behind by a killed process is simply taken over. The lock is not inherited
by forked children (their copy of the file descriptor is closed at fork).

Example:
    >>> lock = WriterLock(Path("runs/demo/rank-0.gva.sqlite"))   # doctest: +SKIP
    >>> WriterLock(Path("runs/demo/rank-0.gva.sqlite"))          # doctest: +SKIP
    Traceback (most recent call last):
    StoreError: run store runs/demo/rank-0.gva.sqlite is being written by another RunWriter ...
    >>> lock.release()                                           # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

from graphviz_autograd.errors import StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, the lock is advisory only
    fcntl = None


class WriterLock:
    """The lock of the store at ``store_path``, taken at construction.

    Raises:
        StoreError: another writer (in this process or another one) holds it.
    """

    def __init__(self, store_path: Path) -> None:
        self.store = store_path
        self.path = store_path.with_name(store_path.name + ".lock")
        self.fd: int | None = None
        for _attempt in range(100):     # the file may be replaced while we lock it: lock the new one
            fd = self._open()
            if self._lock(fd) and _same_file(fd, self.path):
                self.fd = fd
                break
            os.close(fd)
        else:  # pragma: no cover - 100 writers racing for one file
            raise StoreError(f"cannot lock {self.path}: it keeps being replaced")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, json.dumps(info).encode(), 0)
        except OSError:
            pass            # a full disk: the lock holds all the same, only the message is poorer

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create the lock file {self.path}: {exc.strerror or exc}. Fix: "
                             f"make {self.path.parent} writable") from exc

    def _lock(self, fd: int) -> bool:
        if fcntl is None:  # pragma: no cover
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StoreError(
                f"run store {self.store} is being written by another RunWriter ({holder}); two "
                f"writers of one rank would destroy each other's steps. Fix: close the other "
                f"Recorder/RunWriter first (or use `with`), or give this one its own run_dir "
                f"(or rank)") from None
        except OSError as exc:      # a file system without locks (some network mounts)
            warnings.warn(f"graphviz-autograd cannot lock {self.path} ({exc.strerror or exc}); make "
                          f"sure only one writer per rank uses this run directory", RuntimeWarning,
                          stacklevel=4)
        return True

    def release(self) -> None:
        """Remove the lock file and unlock (in that order: no one can lock a file we remove)."""
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        except OSError:
            pass
        self.forget()

    def forget(self) -> None:
        """Close our descriptor (in a forked child: the parent keeps its lock)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holder(fd: int) -> str:
    """Who holds the lock, from the lock file: ``pid 123 on host, since 12:00:01``."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid, host, started = int(info["pid"]), str(info["host"]), float(info["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"
    who = "this process" if pid == os.getpid() and host == socket.gethostname() else f"pid {pid}"
    return f"{who} on {host}, since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"
