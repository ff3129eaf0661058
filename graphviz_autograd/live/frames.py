"""Where user code called us from: the first stack frame outside torch and this library.

Every "source line" the library shows (a node's ``file.py:line``, a finding's line)
comes from :func:`user_frame`, the one lookup there is.

Example:
    >>> user_frame(0).endswith(tuple("0123456789"))
    True
"""
from __future__ import annotations

import contextvars
import os
import sys

import torch

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# The examples ship inside the package but are user code: their lines are shown.
_USER_INSIDE = (os.path.join(_PKG, "examples") + os.sep,)
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_LIBRARY: dict[str, bool] = {}      # co_filename -> whether it is torch's or ours
# The line that called diagnose(): ops reached from it only through torch code
# (nn.Sequential) have no user line of their own, so that line is not shown for them.
IGNORED_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("gva_ignored_source", default="")


def _is_library(filename: str) -> bool:
    known = _LIBRARY.get(filename)
    if known is None:
        path = os.path.abspath(filename) if not filename.startswith("<") else filename
        known = path.startswith("<frozen ") or path.startswith(_TORCH) or (
            path.startswith(_PKG) and not path.startswith(_USER_INSIDE))
        if len(_LIBRARY) < 10_000:
            _LIBRARY[filename] = known
    return known


def user_frame(skip: int = 0) -> str:
    """``file.py:line`` of the innermost frame outside torch and this library ("" if none).

    Args:
        skip: frames above the caller to start from (0: the function calling this one);
            library frames are skipped anyway, so this only saves time.
    """
    f = sys._getframe(skip + 1)
    while f is not None:
        if not _is_library(f.f_code.co_filename):
            return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}"
        f = f.f_back
    return ""


def user_line() -> str:
    """:func:`user_frame` of the current call, or "" when it is the line that called
    ``diagnose()`` (see :data:`IGNORED_SOURCE`)."""
    loc = user_frame(1)
    return "" if loc == IGNORED_SOURCE.get() else loc
