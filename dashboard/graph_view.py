"""Cytoscape elements, layout, stylesheet and metric colours for the graph view (pure functions).

The elements of a (graph version, folding) pair are built once; the browser fetches
them from :data:`ELEMENTS_ROUTE` and ``assets/dashboard.js`` adds them to the cytoscape
instance (going through Dash stores and the component's ``elements`` prop costs seconds
of copying, diffing and measuring on big graphs). Each step's colours go as a compact
payload (one palette index per node) applied the same way, so zoom, pan, selection and
folding survive live refreshes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from graphviz_autograd.export.style import (CLUSTER_BORDER, DARK_TEXT, KIND_STYLE, MODULE_BORDER,
                                            MODULE_FILL, human_bytes, text_color)
from graphviz_autograd.graph.model import Graph, Node, NodeKind

from .fold import GROUP_PREFIX, View
from .layout_engine import FONT_PX, SCREEN_H, SCREEN_W, box_size, label_lines, layout

NO_DATA = "#ffffff"
NONFINITE = "#7b2cbf"      # NaN or Inf values
ZERO = "#1a1a1a"           # exactly 0 on a log scale (a dead path), as in the heat map
# Blue (small / vanishing) -> yellow -> red (large / exploding): plotly's RdYlBu reversed.
PALETTE = ["#3b56a5", "#4470b1", "#4f8bc0", "#63a3cc", "#7cb9d8", "#98cde3", "#b3dfec",
           "#cbebf0", "#e1f3ec", "#f2f9d9", "#fffcc0", "#fff0a8", "#fee090", "#fdc97a",
           "#fdb165", "#fa9656", "#f47a4b", "#e95c3c", "#da3e2f", "#c52527", "#b0122a"]
BINARY = ["#d9f0d3", "#d62728"]


@dataclass(frozen=True)
class Metric:
    label: str
    stats: tuple[str, ...]      # store stats summed into the value
    scale: str                  # "log", "linear" or "binary"
    agg: str                    # how a folded module combines its members: max, mean, sum
    help: str


METRICS: dict[str, Metric] = {
    "grad_norm": Metric("gradient norm", ("grad_norm",), "log", "max",
                        "L2 norm of the gradient flowing out of the node (log scale)"),
    "grad_absmax": Metric("|max| gradient", ("grad_absmax",), "log", "max",
                          "largest absolute gradient entry (log scale)"),
    "grad_zero_frac": Metric("zero fraction", ("grad_zero_frac",), "linear", "mean",
                             "fraction of gradient entries that are exactly 0"),
    "nonfinite": Metric("NaN / Inf", ("grad_nan", "grad_inf"), "binary", "sum",
                        "gradient entries that are NaN or infinite"),
    "act_zero_frac": Metric("dead activations", ("act_zero_frac",), "linear", "mean",
                            "fraction of activation outputs that are 0 (ReLU-like nodes)"),
    "saved_bytes": Metric("saved bytes", (), "log", "sum",
                          "bytes of tensors saved for backward (from the graph, not per step)"),
    "kind": Metric("node kind", (), "none", "max", "colour by kind only"),
}
DEFAULT_METRIC = "grad_norm"
KIND_CLASS = {NodeKind.OP: "op", NodeKind.PARAM: "param", NodeKind.LEAF: "leaf",
              NodeKind.OUTPUT: "output", NodeKind.SAVED: "saved", NodeKind.MODULE: "module"}


def kind_class(n: Node) -> str:
    return KIND_CLASS[n.kind]


@dataclass
class Scene:
    """One laid-out view: what the browser gets for a (graph version, folding) pair."""

    view: View
    elements: list[dict]
    order: list[str]            # visible node ids; the colour payload is indexed like this
    engine: str
    bbox: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)   # x1, y1, x2, y2 of the drawing
    json: bytes | None = None   # elements_payload as JSON, filled on first request

    @property
    def graph(self) -> Graph:
        return self.view.graph


COMPOUND_MAX_NODES = 1000   # past this, module boxes are left out (cytoscape slows down badly)


def build_scene(view: View, engine: str = "auto", classes: dict[str, str] | None = None,
                compounds: bool | None = None) -> Scene:
    """Lay out ``view`` and build its cytoscape elements (``classes``: extra class per node id).

    ``compounds``: draw open modules as boxes (default: up to :data:`COMPOUND_MAX_NODES` nodes).
    """
    g = view.graph
    if compounds is None:
        compounds = len(g) <= COMPOUND_MAX_NODES
    labels = {n.id: label_lines(n, short=compounds) for n in g.nodes}   # boxes name the module
    sizes = {nid: box_size(lines) for nid, lines in labels.items()}
    order = [n.id for n in g.nodes]
    edges = [(e.src, e.dst) for e in g.edges]
    positions, used, broken = layout(order, sizes, edges, view.parent, view.groups, engine)
    boxless = [n for n in g.nodes if view.parent.get(n.id) in broken]
    renamed = {n.id: label_lines(n, short=False) for n in boxless}
    renamed = {k: v for k, v in renamed.items() if v != labels[k]}
    if renamed:                # no box names their module: say it in full, and lay out again
        labels.update(renamed)
        sizes.update({nid: box_size(lines) for nid, lines in renamed.items()})
        positions, used, again = layout(order, sizes, edges, view.parent, view.groups, engine)
        if again != broken:    # the new shapes cut elsewhere: name those in full too
            for n in g.nodes:
                if view.parent.get(n.id) in again and n.id not in renamed:
                    labels[n.id] = label_lines(n, short=False)
                    sizes[n.id] = box_size(labels[n.id])
        broken = again
    classes = classes or {}
    els: list[dict] = []
    # A module whose members a wrapped layout put in two columns gets no box.
    holding = set(view.parent.values()) - broken if compounds else set()
    for gid, path, _up in view.groups:
        # Flat boxes: one per module that directly holds visible nodes, never nested. Nested
        # compound nodes make cytoscape re-style every descendant on each style change
        # (quadratic: minutes at 2,000 nodes); the DOT layout still nests clusters.
        if gid in holding:
            els.append({"data": {"id": gid, "label": path, "kind": "group"},
                        "classes": f"group {classes.get(gid, '')}".strip()})
    for i, n in enumerate(g.nodes):
        w, h = sizes[n.id]
        data = {"id": n.id, "label": "\n".join(labels[n.id]), "kind": kind_class(n), "ix": i,
                "w": w, "h": h}
        if view.parent.get(n.id) in holding:
            data["parent"] = view.parent[n.id]
        x, y = positions[n.id]
        els.append({"data": data, "position": {"x": x, "y": y},
                    "classes": f"{kind_class(n)} {classes.get(n.id, '')}".strip()})
    for i, e in enumerate(g.edges):
        edge = {"data": {"id": f"e{i}", "source": e.src, "target": e.dst}}
        if e.src in classes or e.dst in classes:
            edge["classes"] = classes.get(e.src) or classes.get(e.dst) or ""
        els.append(edge)
    box = (0.0, 0.0, 1.0, 1.0)
    if positions:
        xs = [(positions[i][0] - sizes[i][0] / 2, positions[i][0] + sizes[i][0] / 2) for i in order]
        ys = [(positions[i][1] - sizes[i][1] / 2, positions[i][1] + sizes[i][1] / 2) for i in order]
        pad = 16.0 if holding else 4.0          # module boxes add a little around their members
        box = (min(a for a, _ in xs) - pad, min(a for a, _ in ys) - pad - (12 if holding else 0),
               max(b for _, b in xs) + pad, max(b for _, b in ys) + pad)
    return Scene(view=view, elements=els, order=order, engine=used, bbox=box)


def preset_layout() -> dict:
    """Positions come with the elements; fitting is done in the browser from the scene's bbox
    (cytoscape's own fit measures every label: seconds on big graphs)."""
    return {"name": "preset", "fit": False, "animate": False}


LABEL_MAX_NODES = 1500      # bigger graphs label only the nodes in view once zoomed in


def stylesheet(n_nodes: int = 0) -> list[dict]:
    """The cytoscape stylesheet: node kinds as in the DOT render, module groups, selection.

    Past :data:`LABEL_MAX_NODES` nodes, labels are off (measuring thousands of labels costs
    seconds and they are unreadable at that zoom); ``assets/dashboard.js`` turns them on
    (class ``lbl``) for the nodes in view when the user zooms in.
    """
    big = n_nodes > LABEL_MAX_NODES
    text = {"label": "data(label)", "font-size": FONT_PX, "font-family": "Helvetica, Arial, sans-serif",
            "text-valign": "center", "text-halign": "center", "text-wrap": "wrap",
            "min-zoomed-font-size": 6, "color": DARK_TEXT}
    edge = ({"width": 1, "line-color": "#9a9a9a", "curve-style": "haystack", "haystack-radius": 0}
            if big else {"width": 1, "line-color": "#9a9a9a", "target-arrow-color": "#9a9a9a",
                         "target-arrow-shape": "triangle", "arrow-scale": 0.6, "curve-style": "bezier"})
    # Every property costs per element: big graphs style text only on labelled nodes.
    sheet = [
        {"selector": "node", "style": {"shape": "round-rectangle", "border-width": 1,
                                       **({"label": ""} if big else text)}},
        {"selector": "node[w]", "style": {"width": "data(w)", "height": "data(h)"}},
        {"selector": "edge", "style": edge},
    ]
    shapes = {"op": "round-rectangle", "param": "rectangle", "leaf": "cut-rectangle",
              "output": "rectangle", "saved": "rectangle"}
    for kind, cls in KIND_CLASS.items():
        if kind is NodeKind.MODULE:
            continue                    # node.module below
        fill, border, _shape, style, _text = KIND_STYLE[kind]
        st = {"background-color": fill, "border-color": border, "shape": shapes[cls]}
        if "bold" in style:
            st["border-width"] = 3
        if "dashed" in style:
            st["border-style"] = "dashed"
        if cls == "param":
            st["border-width"] = 2
        sheet.append({"selector": f"node.{cls}", "style": st})
    sheet += [
        {"selector": "node.module", "style": {
            "background-color": MODULE_FILL, "border-color": MODULE_BORDER, "shape": "barrel",
            "border-width": 3, "border-style": "double"}},
        {"selector": "node.group", "style": {
            "background-color": "#8c6bb1", "background-opacity": 0.05, "border-style": "dashed",
            "border-color": CLUSTER_BORDER, "border-width": 1, "shape": "round-rectangle",
            "text-valign": "top", "text-halign": "center", "font-size": FONT_PX, "color": MODULE_BORDER,
            "padding": 8, "text-wrap": "none", "min-zoomed-font-size": 6}},
        {"selector": "node.lbl", "style": text},
        {"selector": "node[bg]", "style": {"background-color": "data(bg)"}},
        {"selector": "node[fg]", "style": {"color": "data(fg)"}},
        {"selector": "node.match", "style": {"overlay-color": "#ff7f0e", "overlay-opacity": 0.35,
                                             "overlay-padding": 6}},
        {"selector": "node[mark > 0]", "style": {"border-color": "#d62728", "border-width": 5,
                                                 "border-style": "double"}},
        {"selector": "node.incident", "style": {"border-color": "#d62728", "border-width": 7,
                                                "border-style": "solid"}},
        {"selector": "node:selected", "style": {"border-color": "#d62728", "border-width": 4}},
        {"selector": ".added", "style": {"border-color": "#2ca02c", "border-width": 4,
                                         "line-color": "#2ca02c", "target-arrow-color": "#2ca02c"}},
        {"selector": "node.changed", "style": {"border-color": "#ff7f0e", "border-width": 4}},
        {"selector": ".removed", "style": {"border-color": "#d62728", "border-width": 4,
                                           "border-style": "dashed", "line-color": "#d62728",
                                           "line-style": "dashed", "opacity": 0.75,
                                           "target-arrow-color": "#d62728"}},
    ]
    return sheet


# -- metric colours ---------------------------------------------------------------
def node_values(scene: Scene, metric: str, node_stats: dict[str, dict[str, float]],
                param_stats: dict[str, dict[str, float]]) -> list[float | None]:
    """The metric value of every visible node (None: nothing recorded), in ``scene.order``.

    ``node_stats[stat][node_id]`` and ``param_stats[stat][param_name]`` are what the
    store returned for the step; folded modules combine their members (max, mean or sum).
    """
    spec = METRICS[metric]
    if spec.scale == "none":
        return [None] * len(scene.order)
    g, view = scene.graph, scene.view
    source = view.source if view.source is not None else g

    def value(n: Node) -> float | None:
        if metric == "saved_bytes":
            return float(sum(s.nbytes for s in n.saved if not s.freed)) if n.saved else None
        table, key = (param_stats, n.param) if n.kind is NodeKind.PARAM else (node_stats, n.id)
        found = [table.get(stat, {}).get(key) for stat in spec.stats]
        found = [v for v in found if v is not None]
        return sum(found) if found else None

    out: list[float | None] = []
    for n in g.nodes:
        members = view.members.get(n.id)
        if members is None:
            out.append(value(n))
            continue
        vals = [v for v in (value(source.node(m)) for m in members if m in source) if v is not None]
        out.append(_combine(vals, spec.agg))
    return out


def _combine(vals: list[float], agg: str) -> float | None:
    if not vals:
        return None
    if any(v != v for v in vals):
        return math.nan
    if agg == "sum":
        return sum(vals)
    if agg == "mean":
        return sum(vals) / len(vals)
    return max(vals)


ELEMENTS_ROUTE = "/_gva/elements"


READABLE_PX = 11.0           # the smallest label size the first view may show


def fits_screen(scene: Scene) -> bool:
    """Whether all of ``scene`` fits a laptop's graph area with labels >= 11 px."""
    x1, y1, x2, y2 = scene.bbox
    return x2 - x1 <= SCREEN_W and y2 - y1 <= SCREEN_H


def elements_payload(scene: Scene) -> dict:
    """What ``assets/dashboard.js`` loads into cytoscape (served at :data:`ELEMENTS_ROUTE`):
    the elements, their bounding box and the lowest zoom that keeps labels readable."""
    labelled = len(scene.order) <= LABEL_MAX_NODES
    return {"elements": scene.elements, "bbox": list(scene.bbox),
            "readable": READABLE_PX / FONT_PX if labelled else None}


def elements_ref(key: str, target: str, scene: Scene, url: str) -> dict:
    """The ELEMENTS store value: where the browser fetches the elements of ``key``.

    Big element lists skip Dash's stores (which would copy and compare megabytes of
    JSON in the page); the browser fetches them once per graph version and folding.
    """
    return {"key": key, "target": target, "url": url, "n": len(scene.elements)}


def color_payload(key: str, target: str, values: list[float | None], metric: str,
                  order: list[str], stamp: str) -> tuple[dict, dict]:
    """``(payload, legend info)``: palette index per node (-1 no data, -2 NaN/Inf, -3 exactly 0
    on a log scale)."""
    spec = METRICS[metric]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    palette = BINARY if spec.scale == "binary" else PALETTE
    lo = hi = None
    if spec.scale == "log":
        pos = [v for v in finite if v > 0]
        lo, hi = (min(pos), max(pos)) if pos else (None, None)
    elif spec.scale == "linear":
        lo, hi = (0.0, max(1.0, max(finite))) if finite else (None, None)
        lo = min(lo, min(finite)) if finite else lo
    codes = [_code(v, spec.scale, lo, hi, len(palette)) for v in values]
    payload = {"key": key, "target": target, "n": len(order), "c": codes, "p": palette,
               "t": [text_color(c) for c in palette], "none": NO_DATA, "nan": NONFINITE,
               "zero": ZERO, "tnone": text_color(NO_DATA), "tnan": text_color(NONFINITE),
               "tzero": text_color(ZERO), "stamp": stamp,
               "off": spec.scale == "none", "probe": order[-1] if order else None}
    info = {"metric": metric, "label": spec.label, "scale": spec.scale, "lo": lo, "hi": hi,
            "n_values": sum(v is not None for v in values),
            "n_nonfinite": sum(v is not None and not math.isfinite(v) for v in values),
            "n_zero": sum(c == -3 for c in codes)}
    return payload, info


def _code(v: float | None, scale: str, lo, hi, n: int) -> int:
    if v is None or scale == "none":
        return -1
    if not math.isfinite(v):
        return -2
    if scale == "binary":
        return 1 if v > 0 else 0
    if lo is None:
        return 0
    if scale == "log":
        if v == 0:
            return -3
        if v < 0:
            return 0
        a, b, x = math.log10(lo), math.log10(hi), math.log10(v)
    else:
        a, b, x = lo, hi, v
    t = 0.5 if b <= a else (x - a) / (b - a)
    return max(0, min(n - 1, int(round(t * (n - 1)))))


def fmt_value(v: float | None, scale: str = "log") -> str:
    if v is None:
        return "–"
    if v != v:
        return "NaN"
    if scale == "bytes":
        return human_bytes(int(v))
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.4g}"
    return f"{v:.2e}"


def search_nodes(view: View, query: str, limit: int = 50) -> list[str]:
    """Visible node ids whose op, module path, parameter name or id contains ``query``.

    Matches inside a folded module return that module's node. Exact label matches first.
    """
    q = (query or "").strip().lower()
    if not q:
        return []
    hits: dict[str, int] = {}
    for n in (view.source or view.graph).nodes:
        fields = (n.op.lower(), n.module.lower(), n.param.lower(), n.id.lower())
        if any(q in f for f in fields):
            vid = view.visible(n.id) or n.id
            score = 0 if q in (n.op.lower(), n.param.lower(), n.module.lower()) else 1
            hits[vid] = min(score, hits.get(vid, 9))
    for gid, path, _up in view.groups:
        if q in path.lower():
            hits.setdefault(gid, 0 if path.lower() == q else 2)
    ranked = sorted(hits, key=lambda vid: (hits[vid], vid.startswith(GROUP_PREFIX)))
    return ranked[:limit]
