"""Tag every autograd node created inside a model's forward with its module path
and the source line of the call that created it.

Example:
    >>> import torch, graphviz_autograd as ga
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU())
    >>> with ga.instrument(net):
    ...     out = net(torch.randn(3, 4)).sum()
    >>> ga.trace(out, model=net).node("0/AddmmBackward0:0").module
    '0'
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from graphviz_autograd.live import tags
from graphviz_autograd.live.frames import user_frame
from graphviz_autograd.live.modules import ModuleTracker


def push_node_hook(fn: Callable) -> None:
    """Call ``fn(node)`` for every autograd node this thread creates, until :func:`pop_node_hook`.

    (``torch.autograd.graph.node_creation_hook`` as a push/pop pair, for owners whose
    capture does not fit one ``with`` block.)
    """
    torch._C._autograd._push_node_creation_hook(fn)


def pop_node_hook() -> None:
    torch._C._autograd._pop_node_creation_hook()


class Instrumentation:
    """State of one :func:`instrument` block."""

    def __init__(self, tracker: ModuleTracker, source: bool, on_node: Callable | None):
        self.tracker = tracker
        self.source = source
        self.on_node = on_node
        self.nodes_seen = 0

    def tag(self, node) -> None:
        self.nodes_seen += 1
        module = self.tracker.current
        where = user_frame(1) if self.source else ""
        meta = node.metadata
        meta[tags.MODULE_KEY] = (module, where)
        meta[tags.CALL_KEY] = self.tracker.current_call
        if self.on_node is not None:
            self.on_node(node, module)


@contextlib.contextmanager
def instrument(model: torch.nn.Module, *, source: bool = True, on_node: Callable | None = None,
               on_output: Callable | None = None) -> Iterator[Instrumentation]:
    """Context manager: nodes created inside the block get module/source tags.

    Args:
        model: the ``nn.Module`` whose submodules name the nodes.
        source: also record ``file:line`` of the user code that created each node.
        on_node: optional ``fn(node, module_path)`` called for each node created.
        on_output: optional ``fn(module_path, module, output)`` after each module's forward.

    Every hook is removed when the block ends, also when the forward raises.
    """
    tags.mark_tagging()
    tracker = ModuleTracker(model, on_output=on_output)
    state = Instrumentation(tracker, source, on_node)
    try:
        tracker.install()
        with torch.autograd.graph.node_creation_hook(state.tag):
            yield state
    finally:
        tracker.remove()
