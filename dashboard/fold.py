"""What the graph view shows: a :class:`Graph` with some modules folded into one node each.

A module path is folded (``collapsed``) or open. Open modules become compound
nodes (groups) around their members; a folded module becomes one node with id
``module:<path>`` standing for every node under it (the ids match
:func:`graphviz_autograd.export.collapse.collapse`). Inputs and outputs never fold.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from graphviz_autograd.export.collapse import merge_groups
from graphviz_autograd.model import Graph, Node, NodeKind

AUTO_MAX_NODES = 600           # bigger graphs open with modules folded
GROUP_PREFIX = "group:"
MODULE_PREFIX = "module:"


def node_module(n: Node) -> str:
    """Module path a node belongs to ("" for none); a parameter belongs to its owner."""
    if n.kind is NodeKind.PARAM:
        return n.param.rpartition(".")[0]
    if n.kind in (NodeKind.OUTPUT, NodeKind.LEAF):
        return ""
    return n.module


def prefixes(path: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b", "a.b.c"]``."""
    if not path:
        return []
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def parent_path(path: str) -> str:
    return path.rpartition(".")[0]


def all_modules(graph: Graph) -> set[str]:
    """Every module path (and prefix) that owns a node."""
    out: set[str] = set()
    for mod in {node_module(n) for n in graph.nodes}:
        out.update(prefixes(mod))
    return out


@dataclass
class View:
    """The visible graph, its compound groups and how original nodes map onto it."""

    graph: Graph
    collapsed: frozenset[str]
    parent: dict[str, str] = field(default_factory=dict)       # visible node -> group id
    groups: list[tuple[str, str, str]] = field(default_factory=list)  # (id, path, parent id)
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)  # folded id -> node ids
    where: dict[str, str] = field(default_factory=dict)         # original id -> visible id
    source: Graph | None = None                                 # the unfolded graph

    def visible(self, node_id: str) -> str | None:
        """The visible node standing for original node ``node_id`` (itself, or its folded module)."""
        return self.where.get(node_id)


def _fold_target(module: str, collapsed: frozenset[str]) -> str | None:
    for p in prefixes(module):
        if p in collapsed:
            return p
    return None


def fold(graph: Graph, collapsed=frozenset()) -> View:
    """Fold every module in ``collapsed`` (and what is under it) into one node."""
    collapsed = frozenset(collapsed)
    target: dict[str, str] = {}
    groups_members: dict[str, list[Node]] = {}
    if collapsed:
        for n in graph.nodes:
            path = _fold_target(node_module(n), collapsed)
            if path is not None:
                gid = MODULE_PREFIX + path
                target[n.id] = gid
                groups_members.setdefault(gid, []).append(n)
    visible = merge_groups(graph, target, lambda gid: _folded_node(gid, groups_members[gid]))
    view = View(graph=visible, collapsed=collapsed,
                members={gid: tuple(m.id for m in ms) for gid, ms in groups_members.items()},
                where={n.id: target.get(n.id, n.id) for n in graph.nodes}, source=graph)
    _add_groups(view)
    return view


def _folded_node(gid: str, members: list[Node]) -> Node:
    counts = Counter(m.op for m in members if m.kind is NodeKind.OP)
    top = ", ".join(op for op, _ in counts.most_common(3))
    ops = [m for m in members if m.kind is NodeKind.OP]
    seqs = [m.seq for m in members if m.seq >= 0]
    return Node(id=gid, kind=NodeKind.OP, op="module", module=gid[len(MODULE_PREFIX):],
                outputs=max(ops, key=lambda m: m.seq).outputs if ops else (),
                saved=tuple(s for m in members for s in m.saved),
                seq=min(seqs) if seqs else -1,
                attrs=(("nodes", str(len(members))),
                       ("params", str(sum(m.kind is NodeKind.PARAM for m in members))),
                       ("ops", top)))


def _add_groups(view: View) -> None:
    needed: set[str] = set()
    for n in view.graph.nodes:
        mod = parent_path(n.module) if n.op == "module" and n.id.startswith(MODULE_PREFIX) \
            else node_module(n)
        if mod:
            view.parent[n.id] = GROUP_PREFIX + mod
            needed.update(prefixes(mod))
    for path in sorted(needed, key=lambda p: (p.count("."), p)):
        up = parent_path(path)
        view.groups.append((GROUP_PREFIX + path, path, GROUP_PREFIX + up if up else ""))


def depth_counts(graph: Graph) -> list[int]:
    """Visible node count when folding every module at depth ``d`` (index d = 0, 1, ...)."""
    mods = [node_module(n).split(".") if node_module(n) else [] for n in graph.nodes]
    deepest = max((len(m) for m in mods), default=0)
    out = []
    for d in range(deepest):
        folded = {".".join(m[:d + 1]) for m in mods if len(m) > d}
        out.append(sum(1 for m in mods if len(m) <= d) + len(folded))
    return out


def modules_at_depth(graph: Graph, depth: int) -> frozenset[str]:
    """Module paths with exactly ``depth + 1`` parts (folding them folds depth ``depth``)."""
    return frozenset(p for p in all_modules(graph) if p.count(".") == depth)


def auto_collapsed(graph: Graph, max_nodes: int = AUTO_MAX_NODES) -> frozenset[str]:
    """What a big graph opens with: the deepest fold that shows at most ``max_nodes`` nodes.

    Small graphs fold nothing; when even folding top-level modules leaves too many
    nodes (a flat graph), top-level modules are folded anyway (the most it can do).
    """
    if len(graph) <= max_nodes:
        return frozenset()
    counts = depth_counts(graph)
    if not counts:
        return frozenset()
    fit = [d for d, c in enumerate(counts) if c <= max_nodes]
    return modules_at_depth(graph, max(fit) if fit else 0)


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
