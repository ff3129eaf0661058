"""DOT text and rendered images of a :class:`Graph`.

The DOT text is written here (not through a DOT builder) so quoting is in one
place: every label is a double-quoted DOT string with ``\\`` and ``"`` escaped,
never an HTML label, so a module named ``<img src=x>`` renders literally.

Example:
    >>> from graphviz_autograd.graph.model import Graph
    >>> print(to_dot(Graph(nodes=(), edges=(), roots=()), legend=False).splitlines()[0])
    digraph autograd {
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter

from graphviz_autograd.errors import FormatError, RenderError
from graphviz_autograd.graph.model import Graph, Node, NodeKind
from graphviz_autograd.graph.fold import depth_to_fit, fold_depth, fold_repeats, node_module
from graphviz_autograd.graph.fold import focus as focus_module
from graphviz_autograd.export.style import CLUSTER_BORDER, FONT, KIND_STYLE, human_bytes

FORMATS = ("svg", "png", "pdf", "dot", "gv")
DEFAULT_MAX_NODES = 2000
# Layout options that keep dot near-linear on big graphs (bench_render.py).
FAST_LAYOUT = {"mclimit": "0.3", "nslimit": "3", "nslimit1": "3", "searchsize": "20",
               "remincross": "false"}


# dot 2.43 rejects a quoted string over 16,384 bytes: longer text is written as pieces joined
# with DOT's ``+`` (2,000 characters stay under the limit even fully escaped).
_PIECE = 2000
# Characters Graphviz or an SVG (XML) reader cannot take: NUL ends dot's string, other control
# characters, lone surrogates and U+FFFE/U+FFFF make the SVG unreadable. Shown as \x00, \ud800.
_UNSAFE = re.compile("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def q(text: object) -> str:
    """Quote ``text`` as a DOT string literal (any text: control characters are shown
    escaped, long text is split into joined pieces).

    Example:
        >>> print(q('say "hi"\\n'), q("a\\x00b"))
        "say \\"hi\\"\\n" "a\\\\x00b"
    """
    s = str(text)
    if len(s) > _PIECE:
        return " + ".join(_quote(s[i:i + _PIECE]) for i in range(0, len(s), _PIECE))
    return _quote(s)


def _quote(s: str) -> str:
    s = s.replace("\\", "\\\\").replace('"', '\\"')
    s = s.replace("\r", "").replace("\n", "\\n")
    if _UNSAFE.search(s):
        s = _UNSAFE.sub(_visible, s)
    return f'"{s}"'


def _visible(match: re.Match) -> str:
    """An unsafe character as the text of its Python escape (a DOT-escaped backslash first)."""
    code = ord(match.group())
    return f"\\\\x{code:02x}" if code < 0x100 else f"\\\\u{code:04x}"


def _lines(*parts: str) -> str:
    """A multi-line label: each part escaped, joined with DOT's ``\\n``."""
    s = "\n".join(p for p in parts if p)
    return q(s)


def node_label(n: Node, show_shapes: bool = True) -> tuple[str, ...]:
    shape = n.outputs[0].short() if show_shapes and n.outputs and n.outputs[0] else ""
    if n.kind is NodeKind.PARAM:
        return (n.param, shape)
    if n.kind is NodeKind.LEAF:
        return (n.id, shape)
    if n.kind is NodeKind.OUTPUT:
        return (f"output {n.param}" if n.param and n.param != "0" else "output", shape)
    if n.kind is NodeKind.SAVED:
        nbytes = human_bytes(n.saved[0].nbytes) if n.saved else ""
        return (f"saved {n.param}", shape, nbytes)
    if n.kind is NodeKind.MODULE:
        a = dict(n.attrs)
        size = a.get("nodes", "?")
        return (n.module, f"{size} node{'' if size == '1' else 's'}: {a.get('ops', '')}")
    return (n.op,)


def _tooltip(n: Node) -> str:
    parts = [n.id]
    if n.module:
        parts.append(f"module: {n.module}")
    if n.source:
        parts.append(f"at {n.source}")
    for m in n.outputs:
        if m is not None:
            parts.append(f"out: {m.short()} {m.dtype}")
    for s in n.saved:
        parts.append(f"saved {s.name}: " + ("freed" if s.freed else
                                            f"{s.meta.short() if s.meta else ''} {human_bytes(s.nbytes)}"))
    return "\n".join(parts)


def to_dot(graph: Graph, *, depth: int | None = None, show_shapes: bool = True,
           legend: bool = True, clusters: bool = True, split_params: int | None = 3,
           split_fanout: int | None = 4, max_nodes: int | None = DEFAULT_MAX_NODES, highlight=(),
           colors=None, title: str = "", focus: str | None = None) -> str:
    """DOT source for ``graph``.

    Args:
        depth: fold modules deeper than this into one node each (None: no folding).
        show_shapes: tensor shapes on edges and nodes.
        legend: draw the legend of node kinds.
        clusters: draw module paths as nested clusters.
        split_params: a parameter used by at least this many ops is drawn once
            beside each user instead of with edges across the graph (None: never).
            This is what keeps unrolled RNNs fast to lay out.
        split_fanout: a tensor used by at least this many ops keeps its edge to
            the first user; later users get a small reference node naming it
            (dense connections, as in DenseNet, otherwise make dot's layout
            superlinear). None: draw every edge.
        max_nodes: above this, fold repeated calls of a module (unrolled RNNs), then
            modules, automatically to fit; if nothing fits, raise
            :class:`RenderError` (dot takes minutes past ~2,000 nodes).
        highlight: node ids drawn with a red border (e.g. a diagnosis).
        colors: ``{node_id: "#rrggbb"}`` fill colours (e.g. gradient norms).
        title: a caption above the graph.
        focus: draw only this module (e.g. ``"layer3.1"``) and the nodes next to
            it: full detail of one part of a graph too big to draw whole.
    """
    if focus is not None:
        graph = focus_module(graph, focus)
    if depth is not None:
        graph = fold_depth(graph, depth)
    if max_nodes is not None and len(graph) > max_nodes:
        graph = fold_repeats(graph)
    if max_nodes is not None and len(graph) > max_nodes:
        fit = depth_to_fit(graph, max_nodes)
        if fit is None:
            raise RenderError(
                f"the graph has {len(graph):,} nodes and folding modules does not bring it under "
                f"max_nodes={max_nodes:,}; dot takes minutes at this size. Render a part "
                "(focus='<module>' or graph.subgraph(ids)), trace with model= so modules can fold, or pass "
                "max_nodes=None to wait for it anyway.")
        graph = fold_depth(graph, fit)
    return _DotWriter(graph, show_shapes, clusters, split_params, split_fanout, set(highlight),
                      colors or {}, title).write(legend)


class _DotWriter:
    def __init__(self, graph, show_shapes, clusters, split_params, split_fanout, highlight, colors,
                 title):
        self.g = graph
        self.show_shapes = show_shapes
        self.clusters = clusters
        self.highlight = highlight
        self.colors = colors
        self.title = title
        uses = Counter(e.src for e in graph.edges)
        self.split = {n.id for n in graph.nodes if n.kind is NodeKind.PARAM and split_params
                      and uses[n.id] >= split_params}
        self.refs = self._fanout_refs(split_fanout, uses)
        self.out: list[str] = []

    def write(self, legend: bool) -> str:
        o = self.out
        o.append("digraph autograd {")
        attrs = {"rankdir": "TB", "fontname": FONT, "ranksep": "0.3", "nodesep": "0.25",
                 "newrank": "true"}
        if len(self.g) > 300:
            attrs.update(FAST_LAYOUT)
        if self.title:
            attrs.update(label=self.title, labelloc="t")
        o.append("  graph [" + ", ".join(f"{k}={q(v)}" for k, v in attrs.items()) + "]")
        o.append(f'  node [fontname={q(FONT)}, fontsize="10", height="0.2", margin="0.06,0.03"]')
        o.append(f'  edge [fontname={q(FONT)}, fontsize="8", arrowsize="0.6", color="#555555"]')
        self._nodes()
        self._edges()
        if legend:
            self._legend()
        o.append("}")
        return "\n".join(o) + "\n"

    def _fanout_refs(self, split_fanout, uses) -> set[tuple[str, str, int]]:
        """Edges ``(src, dst, input_nr)`` drawn through a reference node instead."""
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

    def _ref_line(self, e, ref_id: str) -> str:
        src = self.g.node(e.src)
        where = src.module or src.id
        return (f"{q(ref_id)} [label={_lines('= ' + node_label(src, False)[0], where)}, shape=\"note\", "
                f"style=\"dashed\", fontsize=\"8\", color=\"#999999\", "
                f"tooltip={q('same tensor as ' + e.src)}, id={q('ref:' + ref_id)}]")

    def _node_line(self, n: Node, node_id: str, indent: str) -> str:
        fill, border, shape, style, _ = KIND_STYLE[n.kind]
        fill = self.colors.get(n.id, fill)
        extra = ""
        if n.id in self.highlight:
            border, extra = "#d62728", ', penwidth="3"'
        label = _lines(*node_label(n, self.show_shapes))
        return (f"{indent}{q(node_id)} [label={label}, shape={shape}, style={q(style)}, "
                f"fillcolor={q(fill)}, color={q(border)}, tooltip={q(_tooltip(n))}, "
                f"id={q('node:' + node_id)}{extra}]")

    def _nodes(self) -> None:
        tree: dict[str, list[str]] = {}
        for n in self.g.nodes:
            if n.id in self.split:
                continue
            mod = node_module(n) if self.clusters else ""
            tree.setdefault(mod, []).append(self._node_line(n, n.id, ""))
        for e in self.g.edges:          # one copy of a split parameter beside each user
            if e.src in self.split:
                n, user = self.g.node(e.src), self.g.node(e.dst)
                mod = user.module if self.clusters else ""
                tree.setdefault(mod, []).append(self._node_line(n, f"{e.src}@{e.dst}/{e.input_nr}", ""))
        for e in self.g.edges:          # reference notes for far users of a shared tensor
            if (e.src, e.dst, e.input_nr) in self.refs:
                mod = self.g.node(e.dst).module if self.clusters else ""
                tree.setdefault(mod, []).append(self._ref_line(e, f"{e.src}@{e.dst}/{e.input_nr}"))
        for mod in sorted(tree, key=lambda m: (m.count("."), m)):   # make parents exist
            parts = mod.split(".") if mod else []
            for i in range(1, len(parts)):
                tree.setdefault(".".join(parts[:i]), [])
        self._emit_cluster("", tree, 1)

    def _emit_cluster(self, mod: str, tree: dict[str, list[str]], level: int) -> None:
        pad = "  " * level
        children = sorted(m for m in tree if m and (m.rpartition(".")[0] == mod) and m != mod)
        for line in tree.get(mod, []):
            self.out.append(pad + line)
        for child in children:
            self.out.append(f"{pad}subgraph {q('cluster_' + child)} {{")
            self.out.append(f'{pad}  label={q(child)}; style="rounded,dashed"; '
                            f'color={q(CLUSTER_BORDER)}; fontsize="9"; tooltip={q(child)}')
            self._emit_cluster(child, tree, level + 1)
            self.out.append(pad + "}")

    def _edges(self) -> None:
        for e in self.g.edges:
            far = e.src in self.split or (e.src, e.dst, e.input_nr) in self.refs
            src = f"{e.src}@{e.dst}/{e.input_nr}" if far else e.src
            attrs = []
            if self.show_shapes and e.meta is not None and e.input_nr >= 0:
                attrs.append(f"label={q(' ' + e.meta.short())}")
            if e.input_nr < 0:
                attrs.append('style="dashed", arrowhead="none"')
            self.out.append(f"  {q(src)} -> {q(e.dst)}" + (f" [{', '.join(attrs)}]" if attrs else ""))

    def _legend(self) -> None:
        o = self.out
        o.append('  subgraph "cluster_legend" {')
        o.append('    label="legend"; style="rounded"; color="#bbbbbb"; fontsize="9"; rank="sink"')
        present = {n.kind for n in self.g.nodes}
        prev = None
        for kind, (fill, border, shape, style, text) in KIND_STYLE.items():
            if kind not in present and kind is not NodeKind.OP:
                continue
            lid = f"legend:{kind.value}"
            o.append(f"    {q(lid)} [label={q(text)}, shape={shape}, style={q(style)}, "
                     f"fillcolor={q(fill)}, color={q(border)}, fontsize=\"8\"]")
            if prev:
                o.append(f'    {q(prev)} -> {q(lid)} [style="invis"]')
            prev = lid
        o.append("  }")


# -- running graphviz --------------------------------------------------------
def find_dot() -> tuple[str, str]:
    """``(path, flavour)`` of the Graphviz binary: system ``dot`` first, then graphviz-pure."""
    override = os.environ.get("GVA_DOT")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise RenderError(f"GVA_DOT={override!r} is not an executable file. Fix: point GVA_DOT "
                              "at Graphviz's `dot` (e.g. /usr/bin/dot) or the graphviz-pure "
                              "binary, or unset it to search PATH")
        return override, ("graphviz-pure" if "graphviz-pure" in os.path.basename(override) else "dot")
    path = shutil.which("dot")
    if path:
        return path, "dot"
    for candidate in (os.path.join(os.path.dirname(sys.executable), "graphviz-pure"),
                      shutil.which("graphviz-pure")):
        if candidate and os.path.exists(candidate):
            return candidate, "graphviz-pure"
    raise RenderError("no Graphviz found: neither `dot` nor the graphviz-pure binary is on PATH. "
                      "Install one: `pip install graphviz-pure` (no root needed) or "
                      "`apt-get install graphviz`.")


def run_dot(source: str, fmt: str, timeout: float | None = 300) -> bytes:
    binary, flavour = find_dot()
    if fmt == "pdf" and flavour == "graphviz-pure":
        return _png_to_pdf(run_dot(source, "png", timeout))
    try:
        proc = subprocess.run([binary, f"-T{fmt}"], input=source.encode("utf-8"),
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RenderError(f"{binary} did not finish laying out the graph in {timeout} s; "
                          "fold modules (depth=1) or render a subgraph") from None
    except OSError as exc:
        raise RenderError(f"cannot run Graphviz {binary!r}: {exc}. Fix: install it "
                          "(`apt-get install graphviz` or `pip install graphviz-pure`) or set "
                          "GVA_DOT to a working binary") from exc
    if proc.returncode != 0:
        raise RenderError(f"{binary} -T{fmt} failed (exit {proc.returncode}): "
                          f"{proc.stderr.decode(errors='replace').strip()[:500]}")
    return proc.stdout


def _png_to_pdf(png: bytes) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="PDF", resolution=96.0)
    return buf.getvalue()


def render(graph: Graph, path, *, timeout: float | None = 300, depth: int | None = None,
           show_shapes: bool = True, legend: bool = True, clusters: bool = True,
           split_params: int | None = 3, split_fanout: int | None = 4,
           max_nodes: int | None = DEFAULT_MAX_NODES, highlight=(), colors=None, title: str = "",
           focus: str | None = None) -> str:
    """Write ``graph`` to ``path``; the suffix picks the format (the other arguments are
    :func:`to_dot`'s). Returns the path."""
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise FormatError(f"cannot render to {path!r}: unknown suffix {('.' + fmt) if fmt else '(none)'}; "
                          f"use one of {', '.join('.' + f for f in FORMATS)}")
    source = to_dot(graph, depth=depth, show_shapes=show_shapes, legend=legend, clusters=clusters,
                    split_params=split_params, split_fanout=split_fanout, max_nodes=max_nodes,
                    highlight=highlight, colors=colors, title=title, focus=focus)
    data = source.encode() if fmt in ("dot", "gv") else run_dot(source, fmt, timeout)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise RenderError(f"cannot write {path!r}: {exc.strerror or exc}. Fix: choose a path in a "
                          "writable directory (every parent must be a directory)") from exc
    return path


def to_svg(graph: Graph, **options) -> str:
    return run_dot(to_dot(graph, **options), "svg").decode("utf-8")
