"""DOT text, ``graphviz.Digraph`` objects and rendered images of a :class:`Graph`.

The DOT text is written by :class:`~graphviz_autograd.export.writer.DotWriter` (not
through a DOT builder) so quoting is in one place: every label is a double-quoted DOT
string, never an HTML label, so a module named ``<img src=x>`` renders literally.
Renders run Graphviz's ``dot`` (or the graphviz-pure binary). A PNG is drawn at 96 dpi
unless that would pass :data:`PNG_MAX_SIDE` px on a side or :data:`PNG_MAX_PIXELS` in
all; then the resolution drops just enough (the layout is measured first with
``-Tplain``: one more layout pass, a fraction of a second).

Example:
    >>> from graphviz_autograd.graph.model import Graph
    >>> print(to_dot(Graph(nodes=(), edges=(), roots=()), legend=False).splitlines()[0])
    digraph autograd {
    >>> png_dpi(10.0, 5.0)                 # a 960 x 480 px drawing keeps 96 dpi
    96.0
    >>> round(png_dpi(300.0, 100.0), 1)    # 28,800 x 9,600 px would be too big
    31.3
"""
from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys

from graphviz_autograd.errors import FormatError, RenderError
from graphviz_autograd.graph.model import Graph
from graphviz_autograd.graph.fold import depth_to_fit, fold_depth, fold_repeats
from graphviz_autograd.graph.fold import focus as focus_module
from graphviz_autograd.export.labels import node_label, q
from graphviz_autograd.export.writer import FAST_LAYOUT, DotWriter

__all__ = ["DEFAULT_MAX_NODES", "FAST_LAYOUT", "FORMATS", "PNG_MAX_PIXELS", "PNG_MAX_SIDE",
           "fill_ratio", "find_dot", "layout_size", "node_label", "png_dpi", "q", "render",
           "run_dot", "to_dot", "to_graphviz", "to_svg"]

FORMATS = ("svg", "png", "pdf", "dot", "gv")
DEFAULT_MAX_NODES = 2000
PNG_DPI = 96.0
PNG_MAX_SIDE = 16_000          # px
PNG_MAX_PIXELS = 30_000_000    # about 120 MB of RGBA while cairo draws it; ~2-3 s


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
    return DotWriter(graph, show_shapes, clusters, split_params, split_fanout, highlight, colors,
                     title).write(legend)


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


def run_dot(source: str, fmt: str, timeout: float | None = 300, args: tuple[str, ...] = ()) -> bytes:
    """``dot -T<fmt>`` on ``source``; a PNG is sized by :func:`png_dpi` unless ``args`` set it."""
    binary, flavour = find_dot()
    if fmt == "pdf" and flavour == "graphviz-pure":
        return _png_to_pdf(run_dot(source, "png", timeout))
    if fmt == "png" and flavour == "dot" and not any(a.startswith("-Gdpi") for a in args):
        width, height = layout_size(source, timeout)
        args = (*args, f"-Gdpi={png_dpi(width, height):.2f}")
    try:
        proc = subprocess.run([binary, f"-T{fmt}", *args], input=source.encode("utf-8"),
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


def layout_size(source: str, timeout: float | None = 300) -> tuple[float, float]:
    """Width and height in inches of the laid-out drawing (``dot -Tplain``)."""
    first = run_dot(source, "plain", timeout).split(b"\n", 1)[0].split()
    if len(first) < 4 or first[0] != b"graph":
        raise RenderError(f"unexpected `dot -Tplain` output: {first!r}")
    return float(first[2]), float(first[3])


def fill_ratio(source: str, timeout: float | None = 300) -> float:
    """How much of the laid-out canvas the nodes cover (node area / canvas area, legend left
    out): a thin diagonal staircase of clusters scores under 0.01, a compact drawing 0.05+."""
    plain = run_dot(source, "plain", timeout).decode("utf-8", errors="replace")
    area, canvas = 0.0, 0.0
    for line in plain.splitlines():
        try:
            parts = shlex.split(line)
        except ValueError:
            continue
        if not parts:
            continue
        if parts[0] == "graph":
            canvas = float(parts[2]) * float(parts[3])
        elif parts[0] == "node" and not parts[1].strip('"').startswith("legend:"):
            area += float(parts[4]) * float(parts[5])
    return area / canvas if canvas else 0.0


def png_dpi(width_in: float, height_in: float) -> float:
    """The resolution for a PNG of a ``width_in`` x ``height_in`` inch drawing: 96 dpi, less when
    that passes :data:`PNG_MAX_SIDE` px on a side or :data:`PNG_MAX_PIXELS` in all."""
    width_in, height_in = width_in + 0.2, height_in + 0.2        # dot's pad around the drawing
    dpi = PNG_DPI
    longest = max(width_in, height_in, 1e-6)
    dpi = min(dpi, 0.99 * PNG_MAX_SIDE / longest)
    dpi = min(dpi, 0.99 * math.sqrt(PNG_MAX_PIXELS / max(width_in * height_in, 1e-6)))
    return max(dpi, 1.0)


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


def to_graphviz(graph: Graph, *, depth: int | None = None, show_shapes: bool = True,
                legend: bool = True, clusters: bool = True, split_params: int | None = 3,
                split_fanout: int | None = 4, max_nodes: int | None = DEFAULT_MAX_NODES,
                highlight=(), colors=None, title: str = "", focus: str | None = None):
    """A ``graphviz.Digraph`` holding :func:`to_dot`'s text (same arguments): what torchviz
    users render, view and show in notebooks (``.render()``, ``.pipe()``, ``.source``).

    Example:
        >>> from graphviz_autograd.graph.model import Graph
        >>> to_graphviz(Graph(nodes=(), edges=(), roots=()), legend=False).name
        'autograd'
    """
    import graphviz

    text = to_dot(graph, depth=depth, show_shapes=show_shapes, legend=legend, clusters=clusters,
                  split_params=split_params, split_fanout=split_fanout, max_nodes=max_nodes,
                  highlight=highlight, colors=colors, title=title, focus=focus)
    body = text.rstrip("\n").split("\n")[1:-1]        # between "digraph autograd {" and "}"
    return graphviz.Digraph(name="autograd", body=[line + "\n" for line in body])
