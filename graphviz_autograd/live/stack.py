"""Keep deep autograd graphs from crashing the process when they are released.

In torch 2.14 an autograd ``Node`` keeps the Python wrapper of itself alive
once Python has seen it (PyObject preservation). Releasing such a node then
goes through the wrapper's ``tp_dealloc``, which releases the next node, whose
wrapper is deallocated in turn: one C++/Python frame chain per node, instead of
the iterative deletion autograd uses for nodes Python never saw. Any Python
walk over a graph touches every node, so after it, releasing a chain about
40,000 nodes deep (an ``LSTMCell`` unrolled 5,000 steps) overflows the 8 MiB
main-thread stack and the process dies with SIGSEGV.

The wrappers cannot be detached from Python, and the release happens later,
wherever the user drops the last reference. What we can do is make the stack
big enough: Linux grows the main thread's stack on demand up to the *current*
soft ``RLIMIT_STACK``, and leaves a gap of at least 128 MiB below it for that.
So after a deep walk we raise the soft limit to what the depth needs, within
that gap. Threads other than the main one have a fixed stack; there we warn.
"""
from __future__ import annotations

import threading
import warnings

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

# Measured with torch 2.14.1: 8 MiB holds ~36,000 levels (~230 bytes each).
BYTES_PER_LEVEL = 512           # with a safety factor of two
SAFE_DEPTH_DEFAULT = 24_000     # what an 8 MiB stack holds with margin
_GAP_CAP = 120 * 1024 * 1024    # Linux keeps >= 128 MiB below the main stack

if resource is not None:
    _INITIAL_SOFT, _HARD = resource.getrlimit(resource.RLIMIT_STACK)
else:  # pragma: no cover
    _INITIAL_SOFT = _HARD = -1


class DeepGraphWarning(RuntimeWarning):
    """Releasing this graph may overflow the stack (see graphviz_autograd.live.stack)."""


def _cap() -> int:
    if resource is None:
        return 0
    cap = _GAP_CAP
    if _INITIAL_SOFT != resource.RLIM_INFINITY and _INITIAL_SOFT > cap:
        cap = _INITIAL_SOFT
    if _HARD != resource.RLIM_INFINITY:
        cap = min(cap, _HARD)
    return cap


def affordable(depth: int) -> bool:
    """Whether the stack ``depth`` levels need fits within what Linux allows the main
    thread (raising the soft limit past the real depth only moves a limit; the stack
    still grows on demand)."""
    return (resource is not None and threading.current_thread() is threading.main_thread()
            and depth * BYTES_PER_LEVEL + (8 << 20) <= _cap())


def ensure_release_stack(depth: int) -> bool:
    """Make sure releasing a graph ``depth`` nodes deep cannot overflow the stack.

    Returns True when the stack is (now) large enough; warns and returns False
    when it cannot be made so.
    """
    if depth < SAFE_DEPTH_DEFAULT:
        return True
    need = depth * BYTES_PER_LEVEL + (8 << 20)
    if resource is None or threading.current_thread() is not threading.main_thread():
        _warn(depth, "this thread's stack size is fixed; trace on the main thread")
        return False
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return True
    if need > _cap():
        _warn(depth, f"it needs {need >> 20} MiB of stack, more than the {_cap() >> 20} MiB "
                     "Linux leaves for the main thread; start Python with a larger "
                     "`ulimit -s`")
        return False
    try:
        resource.setrlimit(resource.RLIMIT_STACK, (need, hard))
    except (ValueError, OSError) as exc:  # pragma: no cover
        _warn(depth, f"raising RLIMIT_STACK failed ({exc})")
        return False
    return True


def _warn(depth: int, why: str) -> None:
    warnings.warn(
        f"traced an autograd graph {depth:,} nodes deep; torch may overflow the stack "
        f"when this graph is released ({why})",
        DeepGraphWarning,
        stacklevel=3,
    )
