"""A :class:`RunWriter`'s buffer and the chunk rows a flush writes from it (no SQL here).

Example:
    >>> buf = Buffer()
    >>> buf.pending[1] = [0, *range(13), 1, *range(13)]     # key 1 at steps 0 and 1
    >>> rows, still_open = chunk_rows(buf, {})
    >>> rows[0][:5], len(still_open[1]) // ROW_WIDTH          # key, first, last, n, stride
    ((1, 0, 1, 2, 1), 2)
"""
from __future__ import annotations

from graphviz_autograd.store import chunks
from graphviz_autograd.store.schema import CHUNK_MAX, CHUNK_MIN, ROW_WIDTH


class Buffer:
    """What was added since the last flush took the buffer."""

    __slots__ = ("graphs", "keys", "steps", "scalars", "incidents", "outliers", "pending",
                 "n_pending", "readded", "max_step")

    def __init__(self) -> None:
        self.graphs: list[tuple] = []
        self.keys: list[tuple] = []
        self.steps: list[tuple] = []
        self.scalars: list[tuple] = []
        self.incidents: dict[int, tuple] = {}           # id -> row (re-added with more detail)
        self.outliers: dict[tuple[int, int], tuple] = {}  # (step, rank) -> row (a gathered run)
        self.pending: dict[int, list] = {}   # key_id -> [step, *STATS, step, ...] not yet written
        self.n_pending = 0
        self.readded = False        # a step was added twice (rows need deduplicating)
        self.max_step: int | None = None

    def empty(self) -> bool:
        return not (self.steps or self.graphs or self.keys or self.scalars or self.pending
                    or self.incidents or self.outliers)

    def then(self, later: "Buffer") -> "Buffer":
        """This buffer (a flush that failed) followed by ``later`` (added meanwhile)."""
        self.graphs += later.graphs
        self.keys += later.keys
        self.steps += later.steps
        self.scalars += later.scalars
        self.incidents.update(later.incidents)
        self.outliers.update(later.outliers)
        for key_id, rows in later.pending.items():
            self.pending.setdefault(key_id, []).extend(rows)
        self.n_pending += later.n_pending
        self.readded = self.readded or later.readded
        if later.max_step is not None:
            self.max_step = later.max_step
        return self



def chunk_rows(batch: Buffer, open_chunks: dict[int, list]) -> tuple[list[tuple], dict[int, list]]:
    """One chunk row per key with buffered stats, and the keys' short last chunks after it.

    A key whose last chunk is still short (< :data:`CHUNK_MIN` steps) gets that
    chunk rewritten with the new steps appended (same key and first step), so
    frequent flushes do not leave a series in thousands of tiny chunks.
    """
    out, opened = [], dict(open_chunks)
    for key_id, rows in batch.pending.items():
        if not rows:                # a step that failed validation left it empty
            continue
        prev = open_chunks.get(key_id)
        if prev:
            rows = prev + rows
        if batch.readded:           # a buffered step was re-added: the last one wins
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
