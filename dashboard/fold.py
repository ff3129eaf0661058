"""What the graph view shows: a :class:`Graph` with some modules folded into one node each.

A module path is folded or open. Open modules become compound nodes (groups)
around their members; a folded module becomes one node with id ``module:<path>``
standing for every node under it (:func:`graphviz_autograd.graph.fold.fold` does
the folding). Inputs and outputs never fold.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from graphviz_autograd.graph import fold as graph_fold
from graphviz_autograd.graph.fold import (MODULE_PREFIX, all_modules, depth_counts, describe_folded,
                                          fold_to_fit, modules_at_depth, node_module, parent_path,
                                          prefixes)
from graphviz_autograd.graph.model import Graph

AUTO_MAX_NODES = 60            # the first view shows at most this many boxes (a screenful)
AUTO_BUDGETS = (60, 50, 40, 32, 26, 20, 16)   # tried in turn until the layout fits the screen
AUTO_KEEP_NODES = 40           # graphs this small open whole
GROUP_PREFIX = "group:"

__all__ = ["AUTO_BUDGETS", "AUTO_KEEP_NODES", "AUTO_MAX_NODES", "GROUP_PREFIX", "MODULE_PREFIX", "View", "all_modules",
           "auto_fold", "depth_counts", "describe_folded", "fold", "fold_to_fit", "modules_at_depth",
           "node_module", "parent_path", "prefixes", "unchanged_modules"]


@dataclass
class View:
    """The visible graph, its compound groups and how original nodes map onto it."""

    graph: Graph
    folded: frozenset[str]
    parent: dict[str, str] = field(default_factory=dict)       # visible node -> group id
    groups: list[tuple[str, str, str]] = field(default_factory=list)  # (id, path, parent id)
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)  # folded id -> node ids
    where: dict[str, str] = field(default_factory=dict)         # original id -> visible id
    source: Graph | None = None                                 # the unfolded graph

    def visible(self, node_id: str) -> str | None:
        """The visible node standing for original node ``node_id`` (itself, or its folded module)."""
        return self.where.get(node_id)


def fold(graph: Graph, folded=frozenset()) -> View:
    """Fold every module in ``folded`` (and what is under it) into one node."""
    folded = frozenset(folded)
    result = graph_fold.fold(graph, folded)
    view = View(graph=result.graph, folded=folded, members=result.members, where=result.where,
                source=graph)
    _add_groups(view)
    return view


def _add_groups(view: View) -> None:
    needed: set[str] = set()
    for n in view.graph.nodes:
        mod = node_module(n)
        if mod:
            view.parent[n.id] = GROUP_PREFIX + mod
            needed.update(prefixes(mod))
    for path in sorted(needed, key=lambda p: (p.count("."), p)):
        up = parent_path(path)
        view.groups.append((GROUP_PREFIX + path, path, GROUP_PREFIX + up if up else ""))


def auto_fold(graph: Graph, max_nodes: int = AUTO_MAX_NODES) -> frozenset[str]:
    """What a graph opens with: modules folded, by structure, until at most ``max_nodes`` nodes
    show (:func:`graphviz_autograd.graph.fold.fold_to_fit`: shallow modules first, a repeated
    block opened once). Graphs that small fold nothing; when even the top level is too many
    (a flat graph), the top-level modules are folded (the most it can do)."""
    return fold_to_fit(graph, max_nodes)


def unchanged_modules(graph: Graph, changed: set[str]) -> frozenset[str]:
    """The outermost modules without any node in ``changed``: fold them in a diff view."""
    hot: set[str] = set()
    for n in graph.nodes:
        if n.id in changed:
            hot.update(prefixes(node_module(n)))
    out = set()
    for path in all_modules(graph):
        up = parent_path(path)
        if path not in hot and (not up or up in hot):
            out.add(path)
    return frozenset(out)
