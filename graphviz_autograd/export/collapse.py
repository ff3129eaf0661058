"""Fold module subtrees into single nodes (stdlib only; never mutates a Graph)."""
from __future__ import annotations

from ..model import Edge, Graph, Node, NodeKind


def module_depth(module: str) -> int:
    return 0 if not module else module.count(".") + 1


def _node_module(n: Node) -> str:
    if n.kind is NodeKind.PARAM:
        return n.param.rpartition(".")[0]
    return n.module


def collapse(graph: Graph, depth: int) -> Graph:
    """Merge every node whose module is deeper than ``depth`` into one node per module prefix.

    ``depth=0`` folds each top-level module (``features``, ``classifier``) into
    one node; ``depth=1`` keeps ``features`` open and folds ``features.0`` ...
    Parameters fold with their module. Inputs and outputs stay.
    The folded node has id ``module:<path>``, op ``module`` and attrs
    ``nodes`` (how many it stands for) and ``ops`` (the most common ops).
    """
    if depth < 0:
        from ..errors import FormatError
        raise FormatError(f"depth must be >= 0, got {depth}; 0 folds every top-level module")
    target: dict[str, str] = {}
    groups: dict[str, list[Node]] = {}
    for n in graph.nodes:
        mod = _node_module(n)
        if n.kind in (NodeKind.OUTPUT, NodeKind.LEAF) or module_depth(mod) <= depth:
            continue
        prefix = ".".join(mod.split(".")[: depth + 1])
        gid = f"module:{prefix}"
        target[n.id] = gid
        groups.setdefault(gid, []).append(n)
    if not groups:
        return graph

    def module_node(gid: str) -> Node:
        members = groups[gid]
        counts: dict[str, int] = {}
        for m in members:
            if m.kind is NodeKind.OP:
                counts[m.op] = counts.get(m.op, 0) + 1
        top = ", ".join(op for op, _ in sorted(counts.items(), key=lambda kv: -kv[1])[:3])
        n_params = sum(1 for m in members if m.kind is NodeKind.PARAM)
        seqs = [m.seq for m in members if m.seq >= 0]
        return Node(id=gid, kind=NodeKind.OP, op="module", module=gid[len("module:"):],
                    outputs=_last_outputs(members), seq=min(seqs) if seqs else -1,
                    saved=tuple(sv for m in members for sv in m.saved),
                    attrs=(("nodes", str(len(members))), ("params", str(n_params)), ("ops", top)))
    return merge_groups(graph, target, module_node)


def _last_outputs(members: list[Node]):
    ops = [m for m in members if m.kind is NodeKind.OP]
    if not ops:
        return ()
    return max(ops, key=lambda m: m.seq).outputs


def depth_to_fit(graph: Graph, max_nodes: int) -> int | None:
    """The deepest collapse depth whose graph has at most ``max_nodes`` nodes."""
    deepest = max((module_depth(_node_module(n)) for n in graph.nodes), default=0)
    for depth in range(deepest - 1, -1, -1):
        if len(collapse(graph, depth)) <= max_nodes:
            return depth
    return None


def focus(graph: Graph, module: str, context: int = 1) -> Graph:
    """Only the nodes of ``module`` (and its submodules) plus ``context`` hops around them.

    This is the "full detail of any part" of a graph too big to draw whole.
    """
    inside = {n.id for n in graph.nodes
              if (_node_module(n) == module or _node_module(n).startswith(module + "."))}
    if not inside:
        from ..errors import FormatError
        known = sorted({_node_module(n).split(".")[0] for n in graph.nodes if _node_module(n)})[:15]
        raise FormatError(f"focus={module!r}: no node belongs to that module; top-level modules "
                          f"in this graph: {', '.join(known) or '(none: trace with model= or instrument)'}")
    keep = set(inside)
    frontier = set(inside)
    for _ in range(context):
        step = {e.dst for e in graph.edges if e.src in frontier} | {e.src for e in graph.edges if e.dst in frontier}
        frontier = step - keep
        keep |= step
    return graph.subgraph(keep)


def fold_repeats(graph: Graph, min_calls: int = 3) -> Graph:
    """Fold repeated forward calls of one module (an unrolled RNN cell, a shared block).

    Needs a graph traced under :func:`~graphviz_autograd.instrument` (or recorded),
    whose op nodes carry the ``call`` attribute. Consecutive calls of a module
    called at least ``min_calls`` times that built the same ops fold into one
    node ``repeat:<module>#<first>-<last>`` labelled with the count.
    """
    calls: dict[str, dict[int, list[Node]]] = {}
    for n in graph.nodes:
        if n.kind is NodeKind.OP and n.attrs:
            c = dict(n.attrs).get("call")
            if c is not None:
                calls.setdefault(n.module, {}).setdefault(int(c), []).append(n)
    target: dict[str, str] = {}
    folded: dict[str, tuple[str, int, int, list[Node]]] = {}
    for module, by_call in calls.items():
        if len(by_call) < min_calls:
            continue
        run: list[int] = []
        prev_sig = None
        for c in sorted(by_call) + [None]:
            sig = None if c is None else tuple(sorted(m.op for m in by_call[c]))
            if run and (sig != prev_sig or c is None):
                if len(run) >= 2:
                    gid = f"repeat:{module}#{run[0]}-{run[-1]}"
                    members = [m for k in run for m in by_call[k]]
                    folded[gid] = (module, run[0], run[-1], members)
                    for m in members:
                        target[m.id] = gid
                run = []
            if c is not None:
                run.append(c)
                prev_sig = sig
    if not folded:
        return graph

    def repeat_node(gid: str) -> Node:
        module, first, last, members = folded[gid]
        per_call = len(members) // (last - first + 1)
        return Node(id=gid, kind=NodeKind.OP, op="module", module=module or "(model)",
                    outputs=_last_outputs(members), seq=min(m.seq for m in members),
                    attrs=(("nodes", str(len(members))), ("params", "0"),
                           ("ops", f"x{last - first + 1} calls ({first}-{last}), {per_call} ops each")))
    return merge_groups(graph, target, repeat_node)


def merge_groups(graph: Graph, target: dict[str, str], make_node) -> Graph:
    """Replace each group of nodes (``target``: node id -> group id) by ``make_node(gid)``,
    at the place of its first member; edges are remapped, deduplicated, self-loops dropped."""
    nodes: list[Node] = []
    emitted: set[str] = set()
    for n in graph.nodes:
        gid = target.get(n.id)
        if gid is None:
            nodes.append(n)
        elif gid not in emitted:
            emitted.add(gid)
            nodes.append(make_node(gid))
    edges: dict[tuple[str, str], Edge] = {}
    for e in graph.edges:
        src, dst = target.get(e.src, e.src), target.get(e.dst, e.dst)
        if src != dst:
            edges.setdefault((src, dst), Edge(src, dst, e.output_nr, e.input_nr, e.meta))
    roots = tuple(dict.fromkeys(target.get(r, r) for r in graph.roots))
    return Graph(nodes=tuple(nodes), edges=tuple(edges.values()), roots=roots)
