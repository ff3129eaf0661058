"""Compact layered layouts for Graphviz ``dot``: what to add to a graph's DOT so it fills its canvas.

Two things make ``dot`` draw a network with nested module clusters as a thin diagonal
staircase with most of the canvas empty:

* a parameter (and its ``TBackward``) hangs above the op using it, two ranks up, so a
  module's cluster starts above where the previous module's cluster ends; clusters that
  share ranks must sit side by side, and each one moves a step sideways;
* a deep network is one long chain, hundreds of ranks tall and one module wide.

:func:`plan_layout` answers both, from the drawn nodes, edges and clusters alone:
``hold`` edges (invisible) keep each parameter chain below the other inputs of the op it
feeds, so sibling clusters stack; and a graph much taller than wide is cut, at ranks
where few edges and clusters cross, into columns placed side by side, left to right (the
cut edges are still drawn, but do not rank; clusters spanning a cut are left out, their
members kept; ``tops`` are the first nodes of each column, for an invisible row of
anchors that keeps the columns in order).

Example:
    >>> plan = plan_layout(["a", "b"], [("a", "b")], {}, {"a": (50, 20), "b": (50, 20)})
    >>> plan.columns, plan.hold, plan.loose
    (1, [], set())
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

Size = tuple[float, float]


@dataclass
class Plan:
    """What :func:`plan_layout` decided for one graph."""

    hold: list[tuple[str, str]] = field(default_factory=list)   # invisible (upper, lower) edges
    loose: set[tuple[str, str]] = field(default_factory=set)    # edges that do not rank (column cuts)
    broken: frozenset[str] = frozenset()                         # clusters spanning columns: not drawn
    columns: int = 1
    column: dict[str, int] = field(default_factory=dict)        # node -> column index
    tops: list[list[str]] = field(default_factory=list)         # per column: its first nodes


def chain_nodes(nodes: list[str], preds: dict[str, list[str]]) -> set[str]:
    """Nodes on a parameter chain: a path from a source to the one op it feeds, each node on it
    used once (``param -> TBackward``, a reference note, a folded module fed by nothing)."""
    uses: dict[str, int] = {}
    for v in nodes:
        for u in preds.get(v, ()):
            uses[u] = uses.get(u, 0) + 1
    chain: set[str] = set()
    for v in _topological(nodes, preds):
        ps = preds.get(v, ())
        if uses.get(v, 0) <= 1 and (not ps or (len(ps) == 1 and ps[0] in chain)):
            chain.add(v)
    return chain


def _topological(nodes: list[str], preds: dict[str, list[str]]) -> list[str]:
    succ: dict[str, list[str]] = {}
    indeg = {v: 0 for v in nodes}
    for v in nodes:
        for u in preds.get(v, ()):
            if u in indeg:
                succ.setdefault(u, []).append(v)
                indeg[v] += 1
    queue = deque(v for v in nodes if indeg[v] == 0)
    order: list[str] = []
    seen: set[str] = set()
    while len(order) < len(nodes):
        if not queue:                           # a cycle: break it at the first unplaced node
            queue.append(next(v for v in nodes if v not in seen))
        v = queue.popleft()
        if v in seen:
            continue
        seen.add(v)
        order.append(v)
        for w in succ.get(v, ()):
            indeg[w] -= 1
            if indeg[w] == 0 and w not in seen:
                queue.append(w)
    return order


def hold_edges(nodes: list[str], edges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``(d, s)`` pairs: the chain source ``s`` feeding an op goes below the op's data input ``d``."""
    preds: dict[str, list[str]] = {}
    for u, v in edges:
        preds.setdefault(v, []).append(u)
    chain = chain_nodes(nodes, preds)
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for v in nodes:
        if v in chain:
            continue
        ps = preds.get(v, ())
        data = [u for u in ps if u not in chain]
        fed = [u for u in ps if u in chain]
        if not data or not fed:
            continue
        sources: set[str] = set()
        for u in fed:
            while preds.get(u):                 # up the chain to its source
                u = preds[u][0]
            sources.add(u)
        for d in data[:2]:
            for s in sorted(sources):
                if (d, s) not in seen:
                    seen.add((d, s))
                    out.append((d, s))
    return out


def ranks(nodes: list[str], edges: list[tuple[str, str]]) -> dict[str, int]:
    """Layers as ``dot`` would roughly give them: longest path, each node pulled down to sit
    just above its nearest consumer."""
    preds: dict[str, list[str]] = {}
    succ: dict[str, list[str]] = {}
    for u, v in edges:
        if u != v:
            preds.setdefault(v, []).append(u)
            succ.setdefault(u, []).append(v)
    order = _topological(nodes, preds)
    pos = {v: i for i, v in enumerate(order)}
    rank = dict.fromkeys(nodes, 0)
    for v in order:
        for w in succ.get(v, ()):
            if pos[w] > pos[v]:
                rank[w] = max(rank[w], rank[v] + 1)
    for v in reversed(order):
        below = [rank[w] for w in succ.get(v, ()) if pos[w] > pos[v]]
        if below:
            rank[v] = max(rank[v], min(below) - 1)
    return rank


def plan_layout(nodes: list[str], edges: list[tuple[str, str]], clusters: dict[str, tuple[str, ...]],
                sizes: dict[str, Size], *, aspect: float = 1.6, wrap_above: float = 1400.0,
                ranksep: float = 22.0, nodesep: float = 18.0, max_columns: int = 8,
                columns: int | None = None) -> Plan:
    """Hold edges and column cuts for a top-to-bottom layout of ``nodes``.

    Args:
        nodes: drawn node names.
        edges: drawn ``(src, dst)`` edges (data flows downwards).
        clusters: node -> the clusters holding it, outermost first.
        sizes: node -> (width, height) in points or px (any unit, used throughout).
        aspect: the width / height the wrapped drawing aims at.
        wrap_above: a drawing at most this tall stays one column.
        ranksep, nodesep: the gaps ``dot`` leaves between ranks and between nodes.
        max_columns: never more columns than this.
        columns: exactly this many columns (when the graph can be cut so), instead of the
            count whose shape comes closest to ``aspect``.
    """
    hold = hold_edges(nodes, edges)
    plan = Plan(hold=hold, column=dict.fromkeys(nodes, 0))
    if len(nodes) < 2:
        return plan
    rank = ranks(nodes, edges + hold)
    n_ranks = max(rank.values()) + 1
    tall = [0.0] * n_ranks
    wide = [0.0] * n_ranks
    for v in nodes:
        w, h = sizes.get(v, (50.0, 20.0))
        r = rank[v]
        tall[r] = max(tall[r], h)
        wide[r] += w + nodesep
    top = [0.0] * (n_ranks + 1)
    for r in range(n_ranks):
        top[r + 1] = top[r] + tall[r] + ranksep
    height = top[-1]
    if (height <= wrap_above and columns is None) or columns == 1:
        return plan
    cost = _cut_costs(nodes, edges, clusters, rank, n_ranks)
    best = (math.inf if columns else abs(math.log(max(max(wide), 1.0) / height / aspect)), [])
    counts = [columns] if columns else range(2, min(max_columns, int(height / (0.6 * wrap_above))) + 1)
    for c in counts:
        cuts = _choose_cuts(c, top, cost)
        if not cuts:
            continue
        bounds = [0, *cuts, n_ranks]
        w = sum(max(wide[a:b]) for a, b in zip(bounds, bounds[1:])) + 3 * nodesep * (c - 1)
        h = max(top[b] - top[a] for a, b in zip(bounds, bounds[1:]))
        score = abs(math.log(w / h / aspect))
        if score < best[0]:
            best = (score, cuts)
    cuts = best[1]
    if not cuts:
        return plan
    column = {v: sum(rank[v] >= b for b in cuts) for v in nodes}
    plan.columns = len(cuts) + 1
    plan.column = column
    first = [min(rank[v] for v in nodes if column[v] == k) for k in range(plan.columns)]
    plan.tops = [[v for v in nodes if column[v] == k and rank[v] == first[k]]
                 for k in range(plan.columns)]
    plan.loose = {(u, v) for u, v in edges if column.get(u) != column.get(v)}
    plan.hold = [(u, v) for u, v in hold if column[u] == column[v]]
    spans: dict[str, set[int]] = {}
    for v in nodes:
        for cl in clusters.get(v, ()):
            spans.setdefault(cl, set()).add(column[v])
    plan.broken = frozenset(cl for cl, cols in spans.items() if len(cols) > 1)
    return plan


def _cut_costs(nodes, edges, clusters, rank, n_ranks) -> list[float]:
    """Cost of cutting above rank ``b`` (index b): 2 per edge crossing, and per cluster crossing
    1 plus half the nodes it holds directly (those lose their box; an outer cluster holding
    only blocks costs little, so cuts fall between blocks)."""
    diff = [0.0] * (n_ranks + 1)
    for u, v in edges:
        a, b = sorted((rank.get(u, 0), rank.get(v, 0)))
        if a < b:
            diff[a + 1] += 2.0
            diff[b + 1] -= 2.0
    span: dict[str, list[int]] = {}
    direct: dict[str, int] = {}
    for v in nodes:
        for cl in clusters.get(v, ()):
            lo_hi = span.setdefault(cl, [rank[v], rank[v]])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], rank[v]), max(lo_hi[1], rank[v])
        if clusters.get(v):
            direct[clusters[v][-1]] = direct.get(clusters[v][-1], 0) + 1
    for cl, (lo, hi) in span.items():
        if lo < hi:
            weight = 1.0 + 0.5 * direct.get(cl, 0)
            diff[lo + 1] += weight
            diff[hi + 1] -= weight
    out, running = [], 0.0
    for r in range(n_ranks + 1):
        running += diff[r]
        out.append(running)
    return out


def _choose_cuts(c: int, top: list[float], cost: list[float]) -> list[int]:
    """``c - 1`` ranks to cut above, each the cheapest near its even share of the height."""
    height = top[-1]
    n_ranks = len(top) - 1
    cuts: list[int] = []
    for k in range(1, c):
        target = height * k / c
        window = height / (2.5 * c)
        lo = cuts[-1] + 1 if cuts else 1
        options = [b for b in range(lo, n_ranks) if abs(top[b] - target) <= window]
        if not options:
            return []
        cuts.append(min(options, key=lambda b: (cost[b], abs(top[b] - target))))
    return cuts
