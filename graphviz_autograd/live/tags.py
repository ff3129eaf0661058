"""What the library writes into ``node.metadata`` of live autograd nodes, and reads back.

A node created while a model is instrumented (or recorded) carries its module
path and source line; the recorder adds the saved-tensor details it read at
creation and the slot of the node's gradient statistics.
"""
from __future__ import annotations

MODULE_KEY = "graphviz_autograd"            # (module path, "file.py:line")
CALL_KEY = "graphviz_autograd.call"         # which call of its module created the node (1, 2, ...)
SAVED_KEY = "graphviz_autograd.saved"       # saved-tensor details read at creation
SLOT_KEY = "graphviz_autograd.slot"         # + ".<n>": recorder capture n took this node (its slot)

# Reading node.metadata costs a dict per node; the tracer reads tags only once some
# instrumented block has run in this process (bench_trace.py: the untagged walk).
state = {"tagged_ever": False}


def mark_tagging() -> None:
    state["tagged_ever"] = True


def tagging_ever() -> bool:
    return state["tagged_ever"]


def node_tag(node) -> tuple[str, str] | None:
    """The ``(module path, source)`` stored on ``node``, or None."""
    meta = node.metadata
    return meta.get(MODULE_KEY) if meta else None
