"""Statistic chunks: the run store's column layout (no torch, no NumPy).

The store keeps, per key (one parameter, node or module), its statistics in
*chunks*: one SQLite row holds a run of steps as packed little-endian arrays,
``steps`` (int64) and one float64 array per statistic. A flush writes one row
per key instead of one row per key and step, and reading one key's series over
100,000 steps fetches a few hundred rows instead of 100,000.

Within an array, NaN and ±inf are stored as themselves. A value that is not
applicable (None) is stored as a NaN with a payload no arithmetic produces
(:data:`MISSING`), and a statistic that is None at every step of a chunk is
stored as SQL NULL.

Example:
    >>> blob = pack_values([1.5, None, float("inf")])
    >>> unpack_values(blob)
    [1.5, None, inf]
    >>> value_at(blob, 1) is None, value_at(blob, 2)
    (True, inf)
"""
from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left

from graphviz_autograd.store.schema import Damaged

MISSING = struct.pack("<Q", 0x7FF8_0000_DEAD_BEEF)     # a quiet NaN with our payload
_MISSING_FLOAT = struct.unpack("<d", MISSING)[0]
_BIG_ENDIAN = sys.byteorder == "big"
_DOUBLE = struct.Struct("<d")


def _to_bytes(arr: array) -> bytes:
    if _BIG_ENDIAN:  # pragma: no cover - the stored format is little-endian everywhere
        arr.byteswap()
    return arr.tobytes()


def _from_bytes(code: str, blob: bytes) -> array:
    if blob.__class__ is not bytes or len(blob) % 8:
        raise Damaged(_not_packed(blob))
    arr = array(code)
    arr.frombytes(blob)
    if _BIG_ENDIAN:  # pragma: no cover
        arr.byteswap()
    return arr


def pack_steps(steps: list[int]) -> bytes:
    return _to_bytes(array("q", steps))


def stride_of(steps: list[int]) -> int:
    """The spacing of evenly spaced ``steps`` (1 for a single step), 0 when they are not."""
    if len(steps) == 1:
        return 1
    stride = steps[1] - steps[0]
    return stride if steps == list(range(steps[0], steps[-1] + 1, stride)) else 0


def unpack_steps(blob: bytes) -> array:
    return _from_bytes("q", blob)


def pack_values(values) -> bytes | None:
    """float64 array of ``values`` (None -> :data:`MISSING`); None when every value is None."""
    try:
        return _to_bytes(array("d", values))
    except TypeError:               # some are None
        if all(v is None for v in values):
            return None
        return _to_bytes(array("d", [_MISSING_FLOAT if v is None else v for v in values]))


def unpack_values(blob: bytes) -> list:
    values = _from_bytes("d", blob).tolist()
    if blob.find(MISSING) != -1:        # rare: only chunks where a statistic was sometimes None
        for i, v in enumerate(values):
            if v != v and blob[8 * i:8 * i + 8] == MISSING:
                values[i] = None
    return values


def value_at(blob: bytes, i: int) -> float | None:
    raw = blob[8 * i:8 * i + 8]
    if raw.__class__ is not bytes or len(raw) != 8:
        raise Damaged(f"{_not_packed(blob)} (no value at position {i})")
    return None if raw == MISSING else _DOUBLE.unpack(raw)[0]


def _not_packed(blob) -> str:
    if isinstance(blob, (bytes, str)):
        return (f"a statistics chunk holds {type(blob).__name__} of {len(blob)} bytes where packed "
                f"8-byte numbers belong (cut short?)")
    return f"a statistics chunk holds {type(blob).__name__} {blob!r:.40} where packed numbers belong"


def index_of(steps_blob: bytes, step: int) -> int | None:
    """Position of ``step`` in a packed, ascending steps array (None when absent)."""
    steps = unpack_steps(steps_blob)
    i = bisect_left(steps, step)
    return i if i < len(steps) and steps[i] == step else None


def series_of(rows) -> tuple[list[int], list[float]]:
    """Concatenate ``(steps blob, values blob)`` chunk rows (ascending) into steps and values,
    leaving out the steps where the value is None."""
    steps: list[int] = []
    values: list[float] = []
    for steps_blob, values_blob in rows:
        s = unpack_steps(steps_blob).tolist()
        v = unpack_values(values_blob)
        if len(s) != len(v):
            raise Damaged(f"a statistics chunk holds {len(v)} values for {len(s)} steps (cut short?)")
        if None in v:
            pairs = [(a, b) for a, b in zip(s, v) if b is not None]
            s, v = [a for a, _ in pairs], [b for _, b in pairs]
        steps.extend(s)
        values.extend(v)
    return steps, values
