"""Gradients of parameters without touching what the user's ``.grad`` holds.

``torch.autograd.grad`` is the clean way, but a reentrant checkpoint
(``checkpoint(..., use_reentrant=True)``) refuses it; there the gradients come from a
``backward(retain_graph=True)`` whose writes to ``.grad`` are undone afterwards.

Example:
    >>> import torch
    >>> w = torch.ones(2, requires_grad=True)
    >>> [g.tolist() for g in backward_grads((w * 3).sum(), [w])], w.grad
    ([[3.0, 3.0]], None)
"""
from __future__ import annotations

import torch

from graphviz_autograd.live.walk import root_node, walk


def backward_grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """``d loss / d p`` for each of ``params`` (None where no gradient reaches it), by a
    ``backward(retain_graph=True)``; every ``.grad`` it writes (the parameters', the inputs')
    is restored in ``finally``, so the user's own ``backward()`` still works afterwards."""
    leaves = [n.variable for n in walk([root_node(loss)]) if hasattr(n, "variable")]
    touched = {id(t): t for t in [*params, *leaves]}
    saved = {key: t.grad for key, t in touched.items()}
    try:
        for t in touched.values():
            t.grad = None
        seed = None if loss.numel() == 1 else torch.ones_like(loss)
        loss.backward(seed, retain_graph=True)
        return [None if p.grad is None else p.grad.detach().clone() for p in params]
    finally:
        for key, t in touched.items():
            t.grad = saved[key]
