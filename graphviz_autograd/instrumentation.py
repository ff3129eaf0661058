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
import os
import sys
from typing import Callable, Iterator

import torch

from .errors import HookError

META_KEY = "graphviz_autograd"
CALL_KEY = "graphviz_autograd.call"      # which call of its module created the node (1, 2, ...)
# The tracer reads node tags only once some instrument() block has run.
ACTIVE_EVER = False
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_SKIP = (_PKG_DIR, _TORCH_DIR, "<frozen ")


def _user_frame_location() -> str:
    """``file.py:line`` of the innermost frame outside torch and this package."""
    f = sys._getframe(2)
    while f is not None:
        fname = f.f_code.co_filename
        if not fname.startswith(_SKIP):
            return f"{os.path.basename(fname)}:{f.f_lineno}"
        f = f.f_back
    return ""


class ModuleTracker:
    """Owns a forward pre-hook and post-hook on every submodule of ``model``.

    While installed it keeps ``stack`` (the module paths whose forward is
    running) and calls ``on_output(path, module, output)`` after each forward
    when given, ``on_enter()`` before the top-level module's forward and
    ``on_exit(output)`` after it. :meth:`remove` takes every hook off; callers
    do it in ``finally``.
    """

    def __init__(self, model: torch.nn.Module, on_output: Callable | None = None,
                 on_enter: Callable | None = None, on_exit: Callable | None = None):
        if not isinstance(model, torch.nn.Module):
            raise HookError(f"expected an nn.Module, got {type(model).__name__}; "
                            "pass your model, e.g. ga.instrument(net)")
        self.model = model
        self.on_output, self.on_enter, self.on_exit = on_output, on_enter, on_exit
        self.stack: list[str] = []
        self.call_stack: list[int] = []
        self.calls: dict[str, int] = {}
        self._handles: list = []

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else ""

    @property
    def current_call(self) -> int:
        """1 for the first forward call of the current module, 2 for the next, ...; 0 outside."""
        return self.call_stack[-1] if self.call_stack else 0

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def install(self) -> "ModuleTracker":
        try:
            for name, module in self.model.named_modules():
                top = module is self.model
                self._handles.append(module.register_forward_pre_hook(
                    self._pre(name, self.on_enter if top else None)))
                self._handles.append(module.register_forward_hook(
                    self._post(name, self.on_exit if top else None), always_call=True))
        except BaseException:
            self.remove()
            raise
        return self

    def _pre(self, name: str, enter: Callable | None):
        stack, call_stack, calls = self.stack, self.call_stack, self.calls

        def hook(_module, _args):
            if enter is not None:
                enter()
            stack.append(name)
            n = calls[name] = calls.get(name, 0) + 1
            call_stack.append(n)
        return hook

    def _post(self, name: str, exit_: Callable | None):
        stack, call_stack, on_output = self.stack, self.call_stack, self.on_output

        def hook(module, _args, output):
            if stack:
                stack.pop()
                call_stack.pop()
            if on_output is not None:
                on_output(name, module, output)
            if exit_ is not None:
                exit_(output)
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.stack.clear()
        self.call_stack.clear()


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
        where = _user_frame_location() if self.source else ""
        meta = node.metadata
        meta[META_KEY] = (module, where)
        meta[CALL_KEY] = self.tracker.current_call
        if self.on_node is not None:
            self.on_node(node, module)


@contextlib.contextmanager
def instrument(model: torch.nn.Module, *, source: bool = True,
               on_node: Callable | None = None) -> Iterator[Instrumentation]:
    """Context manager: nodes created inside the block get module/source tags.

    Args:
        model: the ``nn.Module`` whose submodules name the nodes.
        source: also record ``file:line`` of the user code that created each node.
        on_node: optional ``fn(node, module_path)`` called for each node created.

    Every hook is removed when the block ends, also when the forward raises.
    """
    global ACTIVE_EVER
    ACTIVE_EVER = True
    tracker = ModuleTracker(model)
    state = Instrumentation(tracker, source, on_node)
    try:
        tracker.install()
        with torch.autograd.graph.node_creation_hook(state.tag):
            yield state
    finally:
        tracker.remove()


def node_tag(node) -> tuple[str, str] | None:
    """The ``(module path, source)`` an :func:`instrument` block stored on ``node``."""
    meta = node.metadata
    return meta.get(META_KEY) if meta else None
