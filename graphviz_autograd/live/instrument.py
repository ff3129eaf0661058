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
import threading
from typing import Callable, Iterator

import torch

from graphviz_autograd.live import tags
from graphviz_autograd.live.frames import user_frame
from graphviz_autograd.live.modules import ModuleTracker


class _Hooks(threading.local):
    def __init__(self) -> None:
        self.fns: list[Callable] = []
        self.pushed = False


_HOOKS = _Hooks()


def _dispatch(node) -> None:
    for fn in tuple(_HOOKS.fns):
        fn(node)


class NodeHook:
    """Handle of :func:`add_node_hook`; :meth:`remove` stops the calls (from any thread)."""

    def __init__(self, fn: Callable, fns: list) -> None:
        self.fn, self._fns = fn, fns

    def remove(self) -> None:
        fns = self._fns
        if any(f is self.fn for f in fns):
            fns.remove(self.fn)
        if not fns and fns is _HOOKS.fns and _HOOKS.pushed:
            torch._C._autograd._pop_node_creation_hook()
            _HOOKS.pushed = False


def add_node_hook(fn: Callable) -> NodeHook:
    """Call ``fn(node)`` for every autograd node this thread creates, until the returned
    handle's ``remove()``.

    Owners may open and close in any order (two Recorders in one process): one
    node-creation hook of PyTorch's per thread calls them all, pushed with the first
    and popped with the last (PyTorch's own hooks are a stack: popping removes the
    newest, whoever pushed it). An owner removed from another thread leaves that
    thread's hook calling nobody until the thread adds one again.
    """
    state = _HOOKS
    if not state.pushed:
        torch._C._autograd._push_node_creation_hook(_dispatch)
        state.pushed = True
    state.fns.append(fn)
    return NodeHook(fn, state.fns)


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
