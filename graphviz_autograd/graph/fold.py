"""Fold modules (or repeated calls of one) into single nodes (stdlib only; never mutates a Graph).

Folding is one operation with three ways to choose what folds:

* :func:`fold` folds the module paths you name (the dashboard's open/folded modules);
* :func:`fold_depth` folds every module deeper than a depth (``render(depth=1)``);
* :func:`fold_repeats` folds consecutive, identical calls of one module (an unrolled RNN cell).

A folded node has kind :attr:`NodeKind.MODULE`, id ``module:<path>`` (or
``repeat:<module>#<first>-<last>``) and attrs ``nodes`` (how many it stands for),
``params`` and ``ops`` (a short summary). Inputs and outputs never fold.

Example:
    >>> from graphviz_autograd.graph.model import Graph, Node, NodeKind, Edge
    >>> g = Graph(nodes=(Node("param:a.w", NodeKind.PARAM, "AccumulateGrad", param="a.w"),
    ...                  Node("a/MmBackward0:0", NodeKind.OP, "MmBackward0", module="a", seq=0)),
    ...           edges=(Edge("param:a.w", "a/MmBackward0:0"),), roots=())
    >>> [n.id for n in fold_depth(g, 0)]
    ['module:a']
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable, NamedTuple

from ..errors import FormatError
from .model import Edge, Graph, Node, NodeKind

MODULE_PREFIX = "module:"
REPEAT_PREFIX = "repeat:"


# -- module paths ------------------------------------------------------------------
def prefixes(path: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b", "a.b.c"]``."""
    if not path:
        return []
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def parent_path(path: str) -> str:
    return path.rpartition(".")[0]


def module_depth(module: str) -> int:
    return 0 if not module else module.count(".") + 1


def node_module(n: Node) -> str:
    """The module a node is drawn inside ("" for none).

    A parameter belongs to the module owning it; a folded module to its parent; a
    folded run of repeated calls to the module that was called; inputs and outputs
    to no module.
    """
    if n.kind is NodeKind.PARAM:
        return n.param.rpartition(".")[0]
    if n.kind in (NodeKind.OUTPUT, NodeKind.LEAF):
        return ""
    if n.kind is NodeKind.MODULE and n.id.startswith(MODULE_PREFIX):
        return parent_path(n.module)
    return n.module


def _own_module(n: Node) -> str:
    """The module whose fold swallows ``n`` (a folded module: itself)."""
    if n.kind is NodeKind.MODULE and n.id.startswith(MODULE_PREFIX):
        return n.module
    return node_module(n)


def all_modules(graph: Graph) -> set[str]:
    """Every module path (and prefix of one) that owns a node."""
    out: set[str] = set()
    for mod in {_own_module(n) for n in graph.nodes}:
        out.update(prefixes(mod))
    return out


def modules_at_depth(graph: Graph, depth: int) -> frozenset[str]:
    """Module paths with exactly ``depth + 1`` parts (folding them folds depth ``depth``)."""
    return frozenset(p for p in all_modules(graph) if p.count(".") == depth)


# -- folding -----------------------------------------------------------------------
class Folded(NamedTuple):
    """The result of :func:`fold`: the visible graph and how original nodes map onto it."""

    graph: Graph
    where: dict[str, str]                   # original node id -> visible node id
    members: dict[str, tuple[str, ...]]     # folded node id -> the original ids it stands for


def fold(graph: Graph, modules: Iterable[str]) -> Folded:
    """Fold every module path in ``modules`` (and everything under it) into one node.

    Where a path and one of its prefixes are both given, the outer one wins.
    """
    chosen = frozenset(modules)
    target: dict[str, str] = {}
    groups: dict[str, list[Node]] = {}
    if chosen:
        for n in graph.nodes:
            if n.kind in (NodeKind.OUTPUT, NodeKind.LEAF):
                continue
            path = next((p for p in prefixes(_own_module(n)) if p in chosen), None)
            if path is not None:
                gid = MODULE_PREFIX + path
                target[n.id] = gid
                groups.setdefault(gid, []).append(n)
    visible = merge_groups(graph, target, lambda gid: folded_node(gid, gid[len(MODULE_PREFIX):],
                                                                  groups[gid]))
    return Folded(visible, {n.id: target.get(n.id, n.id) for n in graph.nodes},
                  {gid: tuple(m.id for m in ms) for gid, ms in groups.items()})


def fold_depth(graph: Graph, depth: int) -> Graph:
    """Fold every module deeper than ``depth``: ``0`` folds each top-level module
    (``features``, ``classifier``) into one node, ``1`` keeps ``features`` open and folds
    ``features.0`` ..."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise FormatError(f"depth must be an integer >= 0, got {depth!r}; 0 folds every "
                          "top-level module")
    return fold(graph, modules_at_depth(graph, depth)).graph


def depth_counts(graph: Graph) -> list[int]:
    """Visible node count when folding every module at depth ``d`` (index d = 0, 1, ...)."""
    mods = [_own_module(n).split(".") if _own_module(n) and n.kind not in
            (NodeKind.OUTPUT, NodeKind.LEAF) else [] for n in graph.nodes]
    deepest = max((len(m) for m in mods), default=0)
    out = []
    for d in range(deepest):
        folded = {".".join(m[:d + 1]) for m in mods if len(m) > d}
        out.append(sum(1 for m in mods if len(m) <= d) + len(folded))
    return out


def depth_to_fit(graph: Graph, max_nodes: int) -> int | None:
    """The deepest fold depth whose graph has at most ``max_nodes`` nodes (None: none does)."""
    fit = [d for d, c in enumerate(depth_counts(graph)) if c <= max_nodes]
    return max(fit) if fit else None


def folded_node(gid: str, module: str, members: list[Node], summary: str | None = None) -> Node:
    """The one node standing for ``members`` (kind MODULE): outputs of its last op, its
    members' saved tensors, and counts in attrs."""
    ops = [m for m in members if m.kind is NodeKind.OP or m.kind is NodeKind.MODULE]
    if summary is None:
        counts = Counter(m.op for m in ops)
        summary = ", ".join(op for op, _ in counts.most_common(3))
    size = sum(int(dict(m.attrs).get("nodes", 1)) if m.kind is NodeKind.MODULE else 1
               for m in members)
    seqs = [m.seq for m in members if m.seq >= 0]
    return Node(id=gid, kind=NodeKind.MODULE, op="module", module=module,
                outputs=max(ops, key=lambda m: m.seq).outputs if ops else (),
                saved=tuple(s for m in members for s in m.saved),
                seq=min(seqs) if seqs else -1,
                attrs=(("nodes", str(size)),
                       ("params", str(sum(m.kind is NodeKind.PARAM for m in members))),
                       ("ops", summary)))


def fold_repeats(graph: Graph, min_calls: int = 3) -> Graph:
    """Fold repeated forward calls of one module (an unrolled RNN cell, a shared block).

    Needs a graph traced under :func:`~graphviz_autograd.instrument` (or recorded),
    whose op nodes carry the ``call`` attribute. Consecutive calls of a module
    called at least ``min_calls`` times that built the same ops fold into one
    node ``repeat:<module>#<first>-<last>``.
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
                    gid = f"{REPEAT_PREFIX}{module}#{run[0]}-{run[-1]}"
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
        n_calls = last - first + 1
        return folded_node(gid, module or "(model)", members,
                           f"x{n_calls} calls ({first}-{last}), {len(members) // n_calls} ops each")
    return merge_groups(graph, target, repeat_node)


def focus(graph: Graph, module: str, context: int = 1) -> Graph:
    """Only the nodes of ``module`` (and its submodules) plus ``context`` hops around them:
    full detail of one part of a graph too big to draw whole."""
    inside = {n.id for n in graph.nodes
              if (_own_module(n) == module or _own_module(n).startswith(module + "."))}
    if not inside:
        known = sorted({_own_module(n).split(".")[0] for n in graph.nodes if _own_module(n)})[:15]
        raise FormatError(f"focus={module!r}: no node belongs to that module; top-level modules "
                          f"in this graph: {', '.join(known) or '(none: trace with model= or instrument)'}")
    keep = set(inside)
    frontier = set(inside)
    for _ in range(context):
        step = {e.dst for e in graph.edges if e.src in frontier} | {e.src for e in graph.edges if e.dst in frontier}
        frontier = step - keep
        keep |= step
    return graph.subgraph(keep)


def merge_groups(graph: Graph, target: dict[str, str], make_node: Callable[[str], Node]) -> Graph:
    """Replace each group of nodes (``target``: node id -> group id) by ``make_node(gid)``,
    at the place of its first member; edges are remapped, deduplicated, self-loops dropped."""
    if not target:
        return graph
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


# -- folding to a budget, by structure ------------------------------------------------
def _module_index(graph: Graph):
    """Per module path: nodes directly in it, its child modules, a structure signature (ops by
    relative module path, of everything under it) and its first forward position."""
    direct: dict[str, int] = {}
    children: dict[str, set[str]] = {}
    shape: dict[str, Counter] = {}
    first: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        if n.kind in (NodeKind.OUTPUT, NodeKind.LEAF):
            continue
        own = _own_module(n)
        if not own:
            continue
        direct[own] = direct.get(own, 0) + 1
        paths = prefixes(own)
        order = n.seq if n.seq >= 0 else 1 << 40
        for up, path in zip([""] + paths, paths):
            children.setdefault(up, set()).add(path)
            shape.setdefault(path, Counter())[(own[len(path):], n.op, n.kind.value)] += 1
            first[path] = min(first.get(path, order), order)
    return direct, children, shape, first


def fold_to_fit(graph: Graph, budget: int) -> frozenset[str]:
    """The module paths to fold so that at most ``budget`` nodes show, folding as little as it can.

    Starts from every top-level module folded and opens modules one at a time, shallow ones
    first and, at one depth, in forward order, while the count stays within ``budget`` (a
    module that opens into many loose ops counts one level deeper). A
    module built like one already opened (repeated blocks: ``layer1.1`` after ``layer1.0``,
    eleven more encoder layers) stays folded, one node each: the overview shows a block's
    inside once and how often it repeats. When even the top level is over budget, the top
    level is returned (the most folding can do).

    Example:
        >>> from graphviz_autograd.graph.model import Graph, Node, NodeKind
        >>> nodes = tuple(Node(f"b.{i}/{op}:0", NodeKind.OP, op, module=f"b.{i}", seq=2 * i + k)
        ...               for i in range(3) for k, op in enumerate(["AddBackward0", "ReluBackward0"]))
        >>> sorted(fold_to_fit(Graph(nodes=nodes, edges=(), roots=()), 4))
        ['b.1', 'b.2']
    """
    if len(graph) <= budget:
        return frozenset()
    direct, children, shape, first = _module_index(graph)
    outside = sum(1 for n in graph.nodes if n.kind in (NodeKind.OUTPUT, NodeKind.LEAF)
                  or not _own_module(n))
    folded = set(children.get("", ()))
    count = outside + len(folded)
    opened: set[frozenset] = set()
    while True:
        best = None
        for path in folded:
            kids = children.get(path, set())
            grow = direct.get(path, 0) + len(kids) - 1
            if grow < 0 or count + grow > budget:
                continue
            sig = frozenset(shape[path].items())
            if sig in opened:
                continue                       # a repeat of an opened block: stays folded
            # a module that opens into many loose ops (box decoding, losses) waits a level:
            # modules made of modules show structure for fewer boxes
            loose = grow > 4 * (len(kids) + 1)
            key = (path.count(".") + loose, first.get(path, 0), path)
            if best is None or key < best[0]:
                best = (key, path, grow, sig)
        if best is None:
            return frozenset(folded)
        _key, path, grow, sig = best
        folded.discard(path)
        folded |= children.get(path, set())
        count += grow
        opened.add(sig)


def describe_folded(graph: Graph, folded) -> list[str]:
    """Short phrases naming what is folded: runs of siblings as ``layer1.0–1`` (``2 blocks``).

    Example:
        >>> describe_folded(Graph(nodes=(), edges=(), roots=()), {"a.1", "a.2", "a.3", "b"})
        ['a.1–3 (3 blocks)', 'b']
    """
    by_parent: dict[str, list[str]] = {}
    for path in sorted(folded):
        by_parent.setdefault(parent_path(path), []).append(path)
    out: list[str] = []
    for up, paths in sorted(by_parent.items()):
        numbered = sorted((int(p.rpartition(".")[2]), p) for p in paths
                          if p.rpartition(".")[2].isdigit())
        rest = [p for p in paths if not p.rpartition(".")[2].isdigit()]
        run: list[int] = []
        for k, _p in numbered + [(None, "")]:
            if run and (k is None or k != run[-1] + 1):
                head = f"{up}." if up else ""
                out.append(f"{head}{run[0]}" if len(run) == 1 else
                           f"{head}{run[0]}–{run[-1]} ({len(run)} blocks)")
                run = []
            if k is not None:
                run.append(k)
        out.extend(rest)
    return sorted(out)
