"""Helpers over the live autograd graph (torch ``Node`` objects) used by diagnose.

Example:
    >>> import torch
    >>> w = torch.ones(2, requires_grad=True)
    >>> [n.name() for n in walk([(w * 2).sum().grad_fn])]
    ['SumBackward0', 'MulBackward0', 'torch::autograd::AccumulateGrad']
"""
from __future__ import annotations

import re

import torch

from ..model import Graph, NodeKind
from ..tracer import saved_attrs



def root_node(t: torch.Tensor):
    """The autograd node behind tensor ``t`` (its ``grad_fn`` or, for a leaf, its AccumulateGrad)."""
    if t.grad_fn is not None:
        return t.grad_fn
    return torch.autograd.graph.get_gradient_edge(t).node


def walk(roots) -> list:
    """Every node reachable from ``roots`` (iterative, each node once, DFS order)."""
    seen: set[int] = set()
    out = []
    stack = [r for r in reversed(list(roots)) if r is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        stack.extend(n for n, _ in reversed(node.next_functions) if n is not None)
    return out


def is_accumulate(node) -> bool:
    return hasattr(node, "variable")


def forward_name(node_name: str) -> str:
    """``"SigmoidBackward0"`` -> ``"sigmoid"``: the forward op a backward node belongs to."""
    base = re.sub(r"Backward\d*$", "", node_name.rsplit("::", 1)[-1])
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", base).lower() if base else node_name


class IdMap:
    """Maps live nodes to the ids of the same nodes in a traced :class:`Graph`.

    The tracer numbers op nodes by forward creation order (``Node.seq``), so
    sorting the live op nodes by ``sequence_nr`` lines them up with the graph.
    """

    def __init__(self, graph: Graph, roots, param_names: dict[int, str]):
        self.graph = graph
        self.param_names = param_names
        live = [n for n in walk(roots) if not is_accumulate(n)]
        live.sort(key=lambda n: n._sequence_nr())
        ops = sorted((n for n in graph.nodes if n.kind is NodeKind.OP), key=lambda n: n.seq)
        self._by_seq: dict[tuple[int, str], str] = {}
        if len(live) == len(ops):
            for fn, node in zip(live, ops):
                if fn.name() == node.op:
                    self._by_seq[(fn._sequence_nr(), fn.name())] = node.id

    def get(self, node) -> str:
        """The graph id of live ``node``, or "" when it is not in the graph."""
        if node is None:
            return ""
        if is_accumulate(node):
            name = self.param_names.get(id(node.variable), "")
            pid = f"param:{name}"
            return pid if name and pid in self.graph else ""
        return self._by_seq.get((node._sequence_nr(), node.name()), "")


class Reach:
    """Which of some target parameters a live node can reach (memoised, iterative)."""

    def __init__(self, targets: set[int]):
        self.targets = targets
        self.memo: dict[int, frozenset[int]] = {}
        self._keep: list = []         # keep walked nodes alive so ids stay unique

    def __call__(self, node) -> frozenset[int]:
        if node is None:
            return frozenset()
        if id(node) in self.memo:
            return self.memo[id(node)]
        stack = [(node, False)]
        while stack:
            n, expanded = stack.pop()
            if id(n) in self.memo:
                continue
            kids = [k for k, _ in n.next_functions if k is not None]
            if not expanded:
                stack.append((n, True))
                stack.extend((k, False) for k in kids if id(k) not in self.memo)
                continue
            found: set[int] = set()
            if is_accumulate(n) and id(n.variable) in self.targets:
                found.add(id(n.variable))
            for k in kids:
                found |= self.memo.get(id(k), frozenset())
            self.memo[id(n)] = frozenset(found)
            self._keep.append(n)
        return self.memo[id(node)]


def stale_saved(nodes) -> tuple[object, str] | None:
    """The first node whose saved tensor was modified in place, with the attribute name."""
    for node in nodes:
        for attr in saved_attrs(node):
            try:
                getattr(node, attr)
            except RuntimeError as exc:
                if "modified by an inplace operation" in str(exc):
                    return node, attr[len("_saved_"):]
            except Exception:  # noqa: BLE001 - odd saved kinds are not what we look for
                continue
    return None
