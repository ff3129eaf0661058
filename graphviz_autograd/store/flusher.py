"""Flushing in the background: what a :class:`RunWriter` buffered reaches the disk within one
flush interval of wall-clock time, also while training pauses (validation, a checkpoint,
a data stall), so a kill loses at most that interval.

One daemon thread per writer wakes every interval and writes; the training thread only
appends to buffers under a short lock. The thread holds a weak reference to its writer
(a writer nobody keeps is not kept alive), stops at ``close()``, and is gone in a forked
child (a fork waits for a flush in progress). At interpreter exit every open writer is
flushed and closed once.

Example:
    >>> w = RunWriter("runs/demo", flush_interval=2.0)   # doctest: +SKIP
    >>> w.add_step(0, wall_time=0.0, graph_version=None, scalars={"loss": 1.0})  # doctest: +SKIP
    >>> # ... two seconds later step 0 is on disk, whatever the training loop does
"""
from __future__ import annotations

import atexit
import os
import threading
import warnings
import weakref
from typing import Any

_OPEN: "weakref.WeakSet[Any]" = weakref.WeakSet()    # writers not yet closed, in this process


class Flusher:
    """Calls ``writer.background_flush()`` every ``interval`` seconds on a daemon thread."""

    def __init__(self, writer: Any, interval: float) -> None:
        self.interval = interval
        self._ref = weakref.ref(writer)
        self._kick = threading.Event()
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name=f"gva-flush {writer.path.name}",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            self._kick.wait(self.interval)
            self._kick.clear()
            if self._stopped:
                return
            writer = self._ref()
            if writer is None:
                return
            try:
                writer.background_flush()
            except BaseException:  # noqa: BLE001 - never let the thread die silently mid-run
                pass
            del writer          # no strong reference while waiting

    def wake(self) -> None:
        """Flush now instead of at the end of the interval (the buffer is large)."""
        self._kick.set()

    def stop(self) -> None:
        """End the thread after the flush it may be in (returns at once on the thread itself)."""
        self._stopped = True
        self._kick.set()
        if threading.current_thread() is not self.thread and self.thread.is_alive():
            self.thread.join()


def register(writer: Any) -> None:
    _OPEN.add(writer)


def unregister(writer: Any) -> None:
    _OPEN.discard(writer)


def _close_all_at_exit() -> None:
    for writer in list(_OPEN):
        try:
            writer.close()
        except Exception as exc:  # noqa: BLE001 - at exit: say what was not written, go on
            warnings.warn(f"graphviz-autograd could not write the last steps of {writer.path} "
                          f"at exit: {exc}", RuntimeWarning, stacklevel=1)


_HELD: list = []     # flush locks taken for a fork


def _before_fork() -> None:
    """No flush may be inside SQLite while the process forks (the child would inherit its
    mutexes locked): wait for running flushes, hold the others off."""
    for writer in list(_OPEN):
        lock = getattr(writer, "_flush_lock", None)
        if lock is not None and lock.acquire(timeout=FORK_WAIT_S):
            _HELD.append(lock)


def _after_fork_in_parent() -> None:
    while _HELD:
        _HELD.pop().release()


def _after_fork_in_child() -> None:
    _HELD.clear()           # the child's writers get new locks (forked())
    for writer in list(_OPEN):
        writer.forked()
    _OPEN.clear()


FORK_WAIT_S = 10.0
atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
