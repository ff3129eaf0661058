"""The DOT text of a graph: nodes in nested module clusters, a compact layout plan, a legend.

:func:`graphviz_autograd.export.dot.to_dot` folds the graph first and calls
:class:`DotWriter`. The writer collects what it draws (nodes, copies of shared
parameters, reference notes, edges), asks :mod:`export.compact` how to keep the
drawing compact, then writes it.

Example:
    >>> from graphviz_autograd.graph.model import Graph
    >>> DotWriter(Graph(nodes=(), edges=(), roots=())).write(legend=False).splitlines()[0]
    'digraph autograd {'
"""
from __future__ import annotations

from collections import Counter

from graphviz_autograd.graph.fold import node_module, prefixes
from graphviz_autograd.graph.model import Edge, Graph, Node, NodeKind
from graphviz_autograd.export.compact import Plan, plan_layout
from graphviz_autograd.export.labels import lines_label, node_label, q, shown_shape, tooltip
from graphviz_autograd.export.style import CLUSTER_BORDER, FONT, KIND_STYLE, text_color

# Layout options that keep dot near-linear on big graphs (bench_render.py).
FAST_LAYOUT = {"mclimit": "0.3", "nslimit": "3", "nslimit1": "3", "searchsize": "20",
               "remincross": "false"}
RANKSEP_IN, NODESEP_IN = 0.3, 0.25
PT = 72.0
FONT_PT = 10.0


def text_size(lines: tuple[str, ...], font_pt: float = FONT_PT) -> tuple[float, float]:
    """Rough width and height in points of a box holding ``lines`` (Helvetica)."""
    longest = max((len(s) for s in lines), default=1)
    return max(longest * 0.56 * font_pt + 9.0, 30.0), max(len(lines) * 1.2 * font_pt + 4.0, 14.4)


class DotWriter:
    """Writes one graph (already folded) as DOT text; see :func:`export.dot.to_dot`."""

    def __init__(self, graph: Graph, show_shapes: bool = True, clusters: bool = True,
                 split_params: int | None = 3, split_fanout: int | None = 4, highlight=(),
                 colors=None, title: str = "", compact: bool = True):
        self.g = graph
        self.show_shapes = show_shapes
        self.clusters = clusters
        self.highlight = set(highlight)
        self.colors = colors or {}
        self.title = title
        self.compact = compact
        uses = Counter(e.src for e in graph.edges)
        self.split = {n.id for n in graph.nodes if n.kind is NodeKind.PARAM and split_params
                      and uses[n.id] >= split_params}
        self.refs = self._fanout_refs(split_fanout, uses)
        self.drawn: list[tuple[str, str, str, tuple[float, float]]] = []   # name, module, line, size
        self.lines: list[tuple[str, str, list[str]]] = []                  # src, dst, attrs
        self.out: list[str] = []

    # -- what is drawn ---------------------------------------------------------------
    def _fanout_refs(self, split_fanout, uses) -> set[tuple[str, str, int]]:
        """Edges ``(src, dst, input_nr)`` drawn through a reference note instead."""
        if not split_fanout:
            return set()
        heavy = {src for src, k in uses.items() if k >= split_fanout and src not in self.split}
        if not heavy:
            return set()
        seq = {n.id: n.seq for n in self.g.nodes}
        first: dict[str, tuple[int, str]] = {}
        for e in self.g.edges:
            if e.src in heavy:
                key = (seq.get(e.dst, -1) if seq.get(e.dst, -1) >= 0 else 1 << 60, e.dst)
                if e.src not in first or key < first[e.src]:
                    first[e.src] = key
        return {(e.src, e.dst, e.input_nr) for e in self.g.edges
                if e.src in heavy and e.dst != first[e.src][1]}

    def _module(self, n: Node) -> str:
        return node_module(n) if self.clusters else ""

    def _node(self, n: Node, name: str, module: str) -> None:
        fill, border, shape, style, _ = KIND_STYLE[n.kind]
        fill = self.colors.get(n.id, fill)
        extra = "" if fill == KIND_STYLE[n.kind][0] else f", fontcolor={q(text_color(fill))}"
        if n.id in self.highlight:
            border, extra = "#d62728", extra + ', penwidth="3"'
        parts = node_label(n, self.show_shapes, short=self.clusters)
        line = (f"{q(name)} [label={lines_label(*parts)}, shape={shape}, style={q(style)}, "
                f"fillcolor={q(fill)}, color={q(border)}, tooltip={q(tooltip(n))}, "
                f"id={q('node:' + name)}{extra}]")
        self.drawn.append((name, module, line, text_size(tuple(p for p in parts if p))))

    def _ref(self, e: Edge, name: str, module: str) -> None:
        src = self.g.node(e.src)
        parts = ("= " + node_label(src, False)[0], src.module or src.id)
        line = (f"{q(name)} [label={lines_label(*parts)}, shape=\"note\", style=\"dashed\", "
                f"fontsize=\"8\", color=\"#999999\", tooltip={q('same tensor as ' + e.src)}, "
                f"id={q('ref:' + name)}]")
        self.drawn.append((name, module, line, text_size(parts, 8.0)))

    def _collect(self) -> None:
        for n in self.g.nodes:
            if n.id not in self.split:
                self._node(n, n.id, self._module(n))
        for e in self.g.edges:
            far = e.src in self.split or (e.src, e.dst, e.input_nr) in self.refs
            src = f"{e.src}@{e.dst}/{e.input_nr}" if far else e.src
            user = self._module(self.g.node(e.dst))      # copies and notes sit with their user
            if e.src in self.split:
                self._node(self.g.node(e.src), src, user)
            elif far:
                self._ref(e, src, user)
            attrs = []
            if self.show_shapes and e.meta is not None and e.input_nr >= 0:
                shape = e.meta.short()
                if far and e.src not in self.split or shape != shown_shape(self.g.node(e.src)):
                    attrs.append(f"label={q(' ' + shape)}")     # the node does not say it
            if e.input_nr < 0:
                attrs.append('style="dashed", arrowhead="none"')
            self.lines.append((src, e.dst, attrs))

    def _plan(self) -> Plan:
        names = [d[0] for d in self.drawn]
        if not self.compact:
            return Plan(column=dict.fromkeys(names, 0))
        clusters = {name: tuple(prefixes(mod)) for name, mod, _l, _s in self.drawn}
        sizes = {name: size for name, _m, _l, size in self.drawn}
        return plan_layout(names, [(s, d) for s, d, _a in self.lines], clusters, sizes,
                           aspect=1.5, wrap_above=1100.0, ranksep=RANKSEP_IN * PT,
                           nodesep=NODESEP_IN * PT)

    # -- writing -----------------------------------------------------------------------
    def write(self, legend: bool = True) -> str:
        self._collect()
        plan = self._plan()
        o = self.out
        o.append("digraph autograd {")
        attrs = {"rankdir": "TB", "fontname": FONT, "ranksep": str(RANKSEP_IN),
                 "nodesep": str(NODESEP_IN), "newrank": "true"}
        if len(self.drawn) > 300:
            attrs.update(FAST_LAYOUT)
        if self.title:
            attrs.update(label=self.title, labelloc="t")
        o.append("  graph [" + ", ".join(f"{k}={q(v)}" for k, v in attrs.items()) + "]")
        o.append(f'  node [fontname={q(FONT)}, fontsize="{FONT_PT:g}", height="0.2", '
                 f'margin="0.06,0.03"]')
        o.append(f'  edge [fontname={q(FONT)}, fontsize="8", arrowsize="0.6", color="#555555"]')
        self._clusters(plan.broken)
        for src, dst, attrs in self.lines:
            if (src, dst) in plan.loose:
                attrs = [*attrs, 'constraint="false"']
            o.append(f"  {q(src)} -> {q(dst)}" + (f" [{', '.join(attrs)}]" if attrs else ""))
        for upper, lower in plan.hold:
            o.append(f'  {q(upper)} -> {q(lower)} [style="invis", minlen="1", weight="0"]')
        self._column_anchors(plan)
        if legend:
            self._legend()
        o.append("}")
        return "\n".join(o) + "\n"

    def _clusters(self, broken: frozenset[str]) -> None:
        """Nodes inside nested clusters; a broken cluster (spanning columns) is left out and
        what it holds goes to its nearest drawn ancestor."""
        def home(mod: str) -> str:
            while mod and mod in broken:
                mod = mod.rpartition(".")[0]
            return mod

        tree: dict[str, list[str]] = {}
        for _name, mod, line, _size in self.drawn:
            tree.setdefault(home(mod), []).append(line)
        children: dict[str, set[str]] = {}
        for mod in list(tree):
            for path in prefixes(mod):
                if path not in broken:
                    children.setdefault(home(path.rpartition(".")[0]), set()).add(path)

        def emit(mod: str, level: int) -> None:
            pad = "  " * level
            for line in tree.get(mod, []):
                self.out.append(pad + line)
            for child in sorted(children.get(mod, ())):
                if child == mod:
                    continue
                self.out.append(f"{pad}subgraph {q('cluster_' + child)} {{")
                self.out.append(f'{pad}  label={q(child)}; style="rounded,dashed"; '
                                f'color={q(CLUSTER_BORDER)}; fontsize="9"; tooltip={q(child)}')
                emit(child, level + 1)
                self.out.append(pad + "}")
        emit("", 1)

    def _column_anchors(self, plan: Plan) -> None:
        """An invisible row of one point per column, in order, above each column's first nodes:
        it keeps the columns left to right, reading like text."""
        if plan.columns < 2:
            return
        names = [f"column:{k}" for k in range(plan.columns)]
        o = self.out
        o.append("  { rank=same; " + " ".join(f'{q(n)} [shape="point", style="invis", width="0", '
                                              f'height="0", label=""];' for n in names) + " }")
        for a, b in zip(names, names[1:]):
            o.append(f'  {q(a)} -> {q(b)} [style="invis"]')
        for name, tops in zip(names, plan.tops):
            for top in tops:
                o.append(f'  {q(name)} -> {q(top)} [style="invis", weight="0"]')

    def _legend(self) -> None:
        """The node kinds present, in one row under the graph's output."""
        o = self.out
        o.append('  subgraph "cluster_legend" {')
        o.append('    label="legend"; style="rounded"; color="#bbbbbb"; fontsize="9"')
        present = {n.kind for n in self.g.nodes}
        names = []
        for kind, (fill, border, shape, style, text) in KIND_STYLE.items():
            if kind not in present and kind is not NodeKind.OP:
                continue
            lid = f"legend:{kind.value}"
            names.append(lid)
            o.append(f"    {q(lid)} [label={q(text)}, shape={shape}, style={q(style)}, "
                     f"fillcolor={q(fill)}, color={q(border)}, fontsize=\"8\"]")
        o.append("    { rank=same; " + " ".join(q(n) for n in names) + " }")
        for a, b in zip(names, names[1:]):
            o.append(f'    {q(a)} -> {q(b)} [style="invis"]')
        o.append("  }")
        anchor = next((r for r in reversed(self.g.roots) if r in self.g and r not in self.split), None)
        if anchor is not None and names:
            o.append(f'  {q(anchor)} -> {q(names[0])} [style="invis"]')
