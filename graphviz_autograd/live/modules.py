"""The one owner of forward hooks on a model's modules: which module is running.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> tracker = ModuleTracker(net).install()
    >>> try:
    ...     _ = net(torch.ones(1, 2))
    ... finally:
    ...     tracker.remove()
    >>> list(tracker.calls)
    ['', '0']
"""
from __future__ import annotations

import sys
from typing import Callable

import torch

from graphviz_autograd.errors import HookError


class ModuleTracker:
    """Owns a forward pre-hook and post-hook on every submodule of ``model``.

    While installed it keeps :attr:`stack` (the module paths whose forward is
    running), :attr:`calls` (module path -> how many times it ran, in first-call
    order) and :attr:`failed` (the innermost module whose forward raised). It calls
    ``on_output(path, module, output)`` after each forward when given,
    ``on_enter()`` before the top-level module's forward and ``on_exit(output)``
    after it. :meth:`remove` takes every hook off; callers do it in ``finally``.
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
        self.failed: str | None = None
        self._handles: list = []

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else ""

    @property
    def current_call(self) -> int:
        """1 for the first forward call of the current module, 2 for the next, ...; 0 outside."""
        return self.call_stack[-1] if self.call_stack else 0

    @property
    def order(self) -> dict[str, int]:
        """Module path -> position of its first call."""
        return {name: i for i, name in enumerate(self.calls)}

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
            if self.failed is None and sys.exc_info()[1] is not None:
                self.failed = name          # runs while the forward's exception unwinds
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
