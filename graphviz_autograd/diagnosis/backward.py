"""Hooks on autograd nodes that find the first node, in backward execution
order, whose output gradient is NaN/Inf (no global anomaly mode needed).

Example:
    >>> import torch
    >>> x = torch.zeros(3, requires_grad=True)
    >>> y = x.sqrt().sum()
    >>> bw = BackwardWatch()
    >>> bw.attach([y.grad_fn, y.grad_fn.next_functions[0][0]])
    >>> _ = torch.autograd.grad(y, x)
    >>> bw.remove()
    >>> bw.first_bad.node.name()
    'SqrtBackward0'
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from graphviz_autograd.diagnosis.watch import finite


@dataclass
class BadGradient:
    order: int
    node: object
    nan: int
    inf: int
    numel: int
    incoming_finite: bool


class BackwardWatch:
    """Hooks on autograd nodes: the first node whose output gradient is NaN/Inf.

    Register nodes as they are created (``on_node``, for ``instrument``) or
    all at once for an existing graph (``attach``). Owner of its handles.
    """

    def __init__(self):
        self.handles: list = []
        self.calls = 0
        self.first_bad: BadGradient | None = None

    def on_node(self, node, _module: str = "") -> None:
        self.handles.append(node.register_hook(self._hook(node)))

    def attach(self, nodes) -> None:
        for node in nodes:
            if not hasattr(node, "variable"):
                self.on_node(node)

    def _hook(self, node):
        def hook(grad_inputs, grad_outputs):
            self.calls += 1
            if self.first_bad is not None:
                return
            with torch.no_grad():
                bad = [g for g in grad_inputs if g is not None and g.is_floating_point()
                       and not finite(g)]
                if bad:
                    finite_in = all(finite(g) for g in grad_outputs
                                    if g is not None and g.is_floating_point())
                    self.first_bad = BadGradient(
                        self.calls, node, sum(int(torch.isnan(g).sum()) for g in bad),
                        sum(int(torch.isinf(g).sum()) for g in bad),
                        sum(g.numel() for g in bad), finite_in)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
