"""Walking a live autograd graph: what ``trace`` was given, and every node reachable from it.

Example:
    >>> import torch
    >>> w = torch.ones(2, requires_grad=True)
    >>> [n.name() for n in walk([(w * 2).sum().grad_fn])]
    ['SumBackward0', 'MulBackward0', 'torch::autograd::AccumulateGrad']
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from graphviz_autograd.errors import NotDifferentiableError, TraceInputError, describe
from graphviz_autograd.graph.model import TensorMeta
from graphviz_autograd.live import stack
from graphviz_autograd.live.nodes import tensor_meta


# -- what trace() was given ------------------------------------------------------
def flatten_roots(outputs) -> list[tuple[str, torch.Tensor]]:
    """``(path, tensor)`` of every tensor in ``outputs`` that requires grad.

    Raises:
        TraceInputError: ``outputs`` holds no tensor.
        NotDifferentiableError: no tensor in it has an autograd graph.
    """
    found: list[tuple[str, Any]] = []
    todo: list[tuple[str, Any]] = [("", outputs)]
    while todo:
        path, value = todo.pop()
        children = _children(value)
        if children is None:
            found.append((path or "0", value))
        else:
            todo.extend(reversed([(f"{path}.{k}" if path else str(k), v) for k, v in children]))
    tensors = [(p, v) for p, v in found if isinstance(v, torch.Tensor)]
    if not tensors:
        raise TraceInputError(
            f"trace() found no tensor in {describe(outputs)}; pass the loss or the model's "
            "output (a tensor, or a tuple/list/dict of tensors)")
    diff = [(p, t) for p, t in tensors if t.requires_grad]
    if not diff:
        path, t = tensors[0]
        where = "" if path == "0" else f" (at {path!r})"
        raise NotDifferentiableError(
            f"{describe(t)}{where} has no autograd graph, so there is nothing to trace. "
            "Did you compute it under torch.no_grad() or torch.inference_mode(), call "
            ".detach() or .item(), or use inputs/parameters with requires_grad=False? "
            "Compute it with grad enabled from parameters that require grad.")
    return diff


def _children(value):
    if isinstance(value, torch.Tensor):
        return None
    if isinstance(value, Mapping):
        return list(value.items())
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return list(value._asdict().items())
    if isinstance(value, (list, tuple)):
        return list(enumerate(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    return None


def root_node(t: torch.Tensor):
    """The autograd node behind tensor ``t`` (its ``grad_fn`` or, for a leaf, its AccumulateGrad)."""
    if t.grad_fn is not None:
        return t.grad_fn
    return torch.autograd.graph.get_gradient_edge(t).node


# -- the walk ----------------------------------------------------------------------
class Walked(NamedTuple):
    """Every node reachable from the roots, in a deterministic discovery order."""

    fns: list                                       # live autograd nodes
    edges: list[tuple[int, int, int, int]]          # (src, dst, output_nr, input_nr) into fns
    roots: list[tuple[str, int, int, TensorMeta]]   # (name, fns index, output_nr, meta)


def walk_graph(roots: list[tuple[str, torch.Tensor]]) -> Walked:
    """Iterative DFS in ``next_functions`` order (never recursive: graphs may be 100k deep)."""
    fns: list[Any] = []
    index: dict[Any, int] = {}
    raw_edges: list[tuple[int, int, int, int]] = []
    root_refs: list[tuple[str, int, int, TensorMeta]] = []
    for name, t in roots:
        fn = root_node(t)
        if fn not in index:
            index[fn] = len(fns)
            fns.append(fn)
        root_refs.append((name, index[fn], t.output_nr if t.grad_fn is not None else 0,
                          tensor_meta(t)))
    todo = list(reversed(range(len(fns))))
    visited = [False] * len(fns)
    while todo:
        i = todo.pop()
        if visited[i]:
            continue
        visited[i] = True
        pending = []
        for input_nr, (nxt, output_nr) in enumerate(fns[i].next_functions):
            if nxt is None:
                continue
            j = index.get(nxt)
            if j is None:
                j = index[nxt] = len(fns)
                fns.append(nxt)
                visited.append(False)
            raw_edges.append((j, i, output_nr, input_nr))
            if not visited[j]:
                pending.append(j)
        todo.extend(reversed(pending))
    return Walked(fns, raw_edges, root_refs)


def walk(roots) -> list:
    """Every node reachable from the live nodes ``roots`` (each once, DFS order)."""
    seen: set[int] = set()
    out = []
    todo = [r for r in reversed(list(roots)) if r is not None]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        todo.extend(n for n, _ in reversed(node.next_functions) if n is not None)
    return out


def guard_release(n: int, raw_edges: list[tuple[int, int, int, int]]) -> None:
    """Make sure releasing a walked graph of ``n`` nodes cannot overflow the stack (see stack.py)."""
    stack.ensure_release_stack(_longest_path(n, raw_edges))


def _longest_path(n: int, raw_edges: list[tuple[int, int, int, int]]) -> int:
    """Length of the longest chain of nodes (iterative topological pass), or ``n`` (an
    upper bound) when the stack ``n`` levels need is small enough to just grant
    (bench_trace.py lstm5000: skips a 130 ms pass at 75k nodes)."""
    if n < stack.SAFE_DEPTH_DEFAULT or stack.affordable(n):
        return n
    succ: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for s, d, _o, _k in raw_edges:
        succ[d].append(s)            # root -> leaves direction
        indeg[s] += 1
    depth = [1] * n
    ready = [i for i in range(n) if indeg[i] == 0]
    best = 1
    while ready:
        i = ready.pop()
        di = depth[i]
        best = max(best, di)
        for j in succ[i]:
            if depth[j] < di + 1:
                depth[j] = di + 1
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    return best
