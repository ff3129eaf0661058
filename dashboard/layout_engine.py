"""Node positions for the graph view, computed on the server (the browser gets a preset layout).

Small and medium graphs are laid out by Graphviz ``dot`` (``-Tplain`` on DOT we
write here: fixed-size boxes, module clusters, and the compact plan of
:mod:`graphviz_autograd.export.compact`: parameter chains held beside their user, a
tall graph wrapped into columns shaped like the screen), so the view looks like the
rendered graph. Past :data:`DOT_MAX_NODES` visible nodes, or when ``dot`` is
missing, fails or is slow, a layered layout in Python takes over: layers from
longest paths (every node sits just above its nearest consumer), barycentric
ordering with module members kept together, then overlap-free coordinates.
It runs in about linear time (10,000 nodes in well under a second).
"""
from __future__ import annotations

import math
import subprocess
from collections import deque

from graphviz_autograd.export.compact import Plan, plan_layout
from graphviz_autograd.export.dot import FAST_LAYOUT, node_label, q
from graphviz_autograd.graph.model import Node

DOT_MAX_NODES = 2000
DOT_TIMEOUT_S = 5.0
RETRY_MAX_NODES = 160                # up to this size a layout also tries one column less and more
FONT_PX = 12.0                       # node labels; the browser shows them at zoom >= 11/12
CHAR_W, LINE_H, PAD_W, PAD_H = 7.2, 15.0, 16.0, 8.0
SCREEN_W, SCREEN_H = 1030.0, 630.0   # what a 1366x768 laptop shows of the graph, at zoom 11/12
MAX_LABEL_CHARS = 48
RANKSEP, NODESEP = 22.0, 18.0       # px, like the DOT render's 0.3 in / 0.25 in
PT = 72.0                            # dot works in inches


def label_lines(n: Node, short: bool = True) -> tuple[str, ...]:
    """The label of a node, line by line (the same text as the DOT render: names relative to the
    module box around them), each line capped."""
    lines = tuple(p for p in node_label(n, short=short, brief=True) if p)
    return tuple(p if len(p) <= MAX_LABEL_CHARS else p[:MAX_LABEL_CHARS - 1] + "…"
                 for p in lines) or (n.id,)


def box_size(lines: tuple[str, ...]) -> tuple[float, float]:
    """Width and height in px of a box holding ``lines`` at :data:`FONT_PX`."""
    width = max((len(s) for s in lines), default=1) * CHAR_W + PAD_W
    return round(max(width, 30.0), 1), round(len(lines) * LINE_H + PAD_H, 1)


Positions = dict[str, tuple[float, float]]


def layout(ids: list[str], sizes: dict[str, tuple[float, float]], edges: list[tuple[str, str]],
           parent: dict[str, str], groups: list[tuple[str, str, str]],
           engine: str = "auto") -> tuple[Positions, str, frozenset[str]]:
    """Centre positions (px, y grows downwards) of every node in ``ids``, the engine used, and
    the groups that span two columns of a wrapped layout (not drawn as boxes).

    Args:
        ids: node ids, in a stable order.
        sizes: width and height of each node.
        edges: ``(src, dst)`` pairs (data flow; sources go on top).
        parent: node id -> compound group id (modules); groups are drawn as clusters.
        groups: ``(group id, label, parent group id or "")``.
        engine: "dot", "layered" or "auto" (dot up to :data:`DOT_MAX_NODES` nodes).
    """
    if engine in ("auto", "dot") and (engine == "dot" or len(ids) <= DOT_MAX_NODES):
        try:
            plan = compact_plan(ids, sizes, edges, parent, groups)
            pos = dot_layout(ids, sizes, edges, parent, groups, plan=plan)
            if len(ids) <= RETRY_MAX_NODES:     # the plan estimates sizes: try one column less/more
                best = (screen_zoom(pos, sizes), pos, plan)
                for columns in (plan.columns - 1, plan.columns + 1):
                    if columns >= 1:
                        other = compact_plan(ids, sizes, edges, parent, groups, columns=columns)
                        if other.columns == columns:
                            pos2 = dot_layout(ids, sizes, edges, parent, groups, plan=other)
                            best = max(best, (screen_zoom(pos2, sizes), pos2, other),
                                       key=lambda b: b[0])
                _zoom, pos, plan = best
            return pos, "dot", plan.broken
        except (OSError, ValueError, RuntimeError, subprocess.SubprocessError):
            pass                         # no dot, or it failed: the layered layout still works
    return layered_layout(ids, sizes, edges, parent), "layered", frozenset()


def screen_zoom(pos: Positions, sizes) -> float:
    """The zoom at which the whole layout fits :data:`SCREEN_W` x :data:`SCREEN_H`."""
    if not pos:
        return 1.0
    xs = [(x - sizes[n][0] / 2, x + sizes[n][0] / 2) for n, (x, _y) in pos.items()]
    ys = [(y - sizes[n][1] / 2, y + sizes[n][1] / 2) for n, (_x, y) in pos.items()]
    width = max(b for _a, b in xs) - min(a for a, _b in xs) + 40
    height = max(b for _a, b in ys) - min(a for a, _b in ys) + 40
    return min(SCREEN_W / width, SCREEN_H / height)


def compact_plan(ids, sizes, edges, parent, groups, columns: int | None = None) -> Plan:
    """The compact plan (hold edges, columns) for a layout shaped like :data:`SCREEN_W` x
    :data:`SCREEN_H`."""
    up = {gid: parent_gid for gid, _label, parent_gid in groups}
    chains: dict[str, tuple[str, ...]] = {}
    for nid in ids:
        path, gid = [], parent.get(nid, "")
        while gid:
            path.append(gid)
            gid = up.get(gid, "")
        chains[nid] = tuple(reversed(path))
    known = set(ids)
    return plan_layout(ids, [(s, d) for s, d in edges if s in known and d in known], chains, sizes,
                       aspect=SCREEN_W / SCREEN_H, wrap_above=SCREEN_H, ranksep=RANKSEP,
                       nodesep=NODESEP, columns=columns)


def to_dot_source(ids, sizes, edges, parent, groups, plan: Plan | None = None) -> str:
    """DOT text for layout only: nodes ``n<i>`` as fixed boxes, modules as clusters (those the
    plan breaks left out), plus the plan's hold edges and column anchors."""
    plan = plan or Plan()
    index = {nid: i for i, nid in enumerate(ids)}
    attrs = {"rankdir": "TB", "ranksep": f"{RANKSEP / PT:.3f}", "nodesep": f"{NODESEP / PT:.3f}",
             "newrank": "true", "splines": "false"}
    if len(ids) > 300:
        attrs.update(FAST_LAYOUT)
    out = ["digraph layout {", "  graph [" + ", ".join(f"{k}={q(v)}" for k, v in attrs.items()) + "]",
           '  node [shape=box, fixedsize=true, label=""]', '  edge [arrowhead=none]']
    up_of = {gid: up for gid, _label, up in groups}

    def home(gid: str) -> str:
        while gid and gid in plan.broken:
            gid = up_of.get(gid, "")
        return gid

    children: dict[str, list[str]] = {}
    for gid, _label, up in groups:
        if gid not in plan.broken:
            children.setdefault(home(up), []).append(gid)
    members: dict[str, list[str]] = {}
    for nid in ids:
        members.setdefault(home(parent.get(nid, "")), []).append(nid)
    cluster_no = {gid: i for i, (gid, _l, _u) in enumerate(groups)}

    def emit(gid: str, pad: str) -> None:
        for nid in members.get(gid, ()):
            w, h = sizes[nid]
            out.append(f"{pad}n{index[nid]} [width={w / PT:.3f}, height={h / PT:.3f}]")
        for child in children.get(gid, ()):
            out.append(f"{pad}subgraph cluster_{cluster_no[child]} {{ margin=\"10\"")
            emit(child, pad + "  ")
            out.append(pad + "}")

    emit("", "  ")
    for src, dst in edges:
        if src in index and dst in index:
            loose = ' [constraint="false"]' if (src, dst) in plan.loose else ""
            out.append(f"  n{index[src]} -> n{index[dst]}{loose}")
    for upper, lower in plan.hold:
        out.append(f'  n{index[upper]} -> n{index[lower]} [style="invis", minlen="1", weight="0"]')
    if plan.columns > 1:
        anchors = [f"c{k}" for k in range(plan.columns)]
        out.append("  { rank=same; " + " ".join(f'{a} [width="0", height="0"];' for a in anchors) + " }")
        out += [f"  {a} -> {b}" for a, b in zip(anchors, anchors[1:])]
        out += [f'  {a} -> n{index[top]} [weight="0"]' for a, tops in zip(anchors, plan.tops)
                for top in tops]
    out.append("}")
    return "\n".join(out) + "\n"


def dot_layout(ids, sizes, edges, parent, groups, timeout: float = DOT_TIMEOUT_S,
               plan: Plan | None = None) -> Positions:
    """Positions from ``dot -Tplain``. Raises OSError/RuntimeError/TimeoutExpired on failure."""
    from graphviz_autograd.export.dot import find_dot  # noqa: PLC0415 (raises RenderError)

    try:
        binary, flavour = find_dot()
    except Exception as exc:  # noqa: BLE001 - RenderError: no Graphviz at all
        raise RuntimeError(str(exc)) from exc
    if flavour != "dot":
        raise RuntimeError("graphviz-pure does not write -Tplain; using the layered layout")
    if not ids:
        return {}
    proc = subprocess.run([binary, "-Tplain"], input=to_dot_source(ids, sizes, edges, parent,
                                                                     groups, plan).encode(),
                          capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode(errors="replace")[:300])
    height = 0.0
    pos: Positions = {}
    for line in proc.stdout.decode().splitlines():
        parts = line.split(" ", 4)
        if parts[0] == "graph":
            height = float(parts[3])
        elif parts[0] == "node" and parts[1].startswith("n"):
            i = int(parts[1][1:])
            pos[ids[i]] = (round(float(parts[2]) * PT, 1), round((height - float(parts[3])) * PT, 1))
    if len(pos) != len(ids):
        raise RuntimeError(f"dot placed {len(pos)} of {len(ids)} nodes")
    return pos


def _topo_order(n: int, succ: list[list[int]], pred: list[list[int]]) -> list[int]:
    indeg = [len(p) for p in pred]
    queue = deque(i for i in range(n) if indeg[i] == 0)
    order: list[int] = []
    seen = [False] * n
    while len(order) < n:
        if not queue:                    # a cycle: break it at the first unplaced node
            queue.append(next(i for i in range(n) if not seen[i]))
        v = queue.popleft()
        if seen[v]:
            continue
        seen[v] = True
        order.append(v)
        for w in succ[v]:
            indeg[w] -= 1
            if indeg[w] == 0 and not seen[w]:
                queue.append(w)
    return order


def layered_layout(ids: list[str], sizes: dict[str, tuple[float, float]],
                   edges: list[tuple[str, str]], parent: dict[str, str] | None = None,
                   sweeps: int = 4) -> Positions:
    """A fast Sugiyama-style top-down layout (see the module docstring)."""
    n = len(ids)
    if n == 0:
        return {}
    index = {nid: i for i, nid in enumerate(ids)}
    succ: list[list[int]] = [[] for _ in range(n)]
    pred: list[list[int]] = [[] for _ in range(n)]
    for s, d in edges:
        i, j = index.get(s), index.get(d)
        if i is not None and j is not None and i != j:
            succ[i].append(j)
            pred[j].append(i)
    order = _topo_order(n, succ, pred)
    rank = [0] * n
    for pos, v in enumerate(order):
        rank[v] = pos
    succ = [[w for w in ws if rank[w] > rank[v]] for v, ws in enumerate(succ)]   # drop back edges
    pred = [[u for u in us if rank[u] < rank[v]] for v, us in enumerate(pred)]
    layer = [0] * n
    for v in order:
        for w in succ[v]:
            layer[w] = max(layer[w], layer[v] + 1)
    for v in reversed(order):            # sit just above the nearest consumer
        if succ[v]:
            layer[v] = max(layer[v], min(layer[w] for w in succ[v]) - 1)
    layers: list[list[int]] = [[] for _ in range(max(layer) + 1)]
    for v in order:
        layers[layer[v]].append(v)
    group = [(parent or {}).get(nid, "") for nid in ids]
    place = [0.0] * n

    def number() -> None:
        for row in layers:
            for k, v in enumerate(row):
                place[v] = (k + 0.5) / len(row)

    def reorder(row: list[int], nbrs: list[list[int]]) -> list[int]:
        bary = {v: (sum(place[u] for u in nbrs[v]) / len(nbrs[v]) if nbrs[v] else place[v])
                for v in row}
        members: dict[str, list[float]] = {}
        for v in row:
            if group[v]:
                members.setdefault(group[v], []).append(bary[v])
        gb = {g: sum(b) / len(b) for g, b in members.items()}
        return sorted(row, key=lambda v: (gb.get(group[v], bary[v]) if group[v] else bary[v], bary[v]))

    number()
    for sweep in range(sweeps):
        down = sweep % 2 == 0
        for li in (range(1, len(layers)) if down else range(len(layers) - 2, -1, -1)):
            if len(layers[li]) < 2:
                continue
            layers[li] = reorder(layers[li], pred if down else succ)
            for k, v in enumerate(layers[li]):
                place[v] = (k + 0.5) / len(layers[li])
    return _coordinates(ids, sizes, layers, succ, pred)


def _coordinates(ids, sizes, layers, succ, pred) -> Positions:
    n = len(ids)
    width = [sizes[nid][0] for nid in ids]
    height = [sizes[nid][1] for nid in ids]
    x = [0.0] * n
    for row in layers:                   # packed, centred
        total = sum(width[v] for v in row) + NODESEP * (len(row) - 1)
        cursor = -total / 2
        for v in row:
            x[v] = cursor + width[v] / 2
            cursor += width[v] + NODESEP
    for it in range(4):                  # pull towards neighbours, keep order and spacing
        rows = layers if it % 2 == 0 else layers[::-1]
        for row in rows:
            want = [(sum(x[u] for u in pred[v] + succ[v]) / len(pred[v] + succ[v]))
                    if (pred[v] or succ[v]) else x[v] for v in row]
            if len(row) == 1:
                x[row[0]] = want[0]
                continue
            left = _pack(row, want, width, 1)
            right = _pack(row[::-1], want[::-1], width, -1)[::-1]
            for v, a, b in zip(row, left, right):
                x[v] = (a + b) / 2
    pos: Positions = {}
    y = 0.0
    for row in layers:
        h = max((height[v] for v in row), default=0.0)
        for v in row:
            pos[ids[v]] = (round(x[v], 1), round(y + h / 2, 1))
        y += h + RANKSEP
    return pos


def _pack(row: list[int], want: list[float], width: list[float], sign: int) -> list[float]:
    """Place ``row`` at its wanted x where possible, pushing apart (rightwards when sign=1)."""
    out: list[float] = []
    prev_v, prev_x = None, -math.inf * sign
    for v, w in zip(row, want):
        if prev_v is None:
            xv = w
        else:
            gap = (width[prev_v] + width[v]) / 2 + NODESEP
            xv = max(w, prev_x + gap) if sign > 0 else min(w, prev_x - gap)
        out.append(xv)
        prev_v, prev_x = v, xv
    shift = sum(w - o for w, o in zip(want, out)) / len(out) if out else 0.0
    return [o + shift for o in out]
