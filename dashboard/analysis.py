"""Callbacks of the analysis views: gradient flow, layer x step heat map, version diff, rank compare.

Plain functions of (data source, inputs) -> outputs, like :mod:`dashboard.callbacks`.
"""
from __future__ import annotations


from dash import no_update

from graphviz_autograd.graph.model import Edge, Graph, Node

from . import figures
from . import panels
from .callbacks import READ_ERRORS, _opts, only_step, step_patch
from .fold import auto_fold, fold, unchanged_modules
from .gradients import build_flow
from .graph_view import build_scene, preset_layout

FLOW_MAX_ROWS = 30              # more parameters than this: grouped by module (problems stay alone)
DIFF_MAX_NODES = 800            # the diff view goes through the component's props: keep it small


def _keep_zoom(fig: dict, run: str) -> dict:
    """Live refreshes resend these figures: keep the user's zoom while the run stays the same."""
    fig["layout"]["uirevision"] = run
    return fig


def flow_figure(src, latest, state):
    """Max and RMS |grad| per parameter at the selected step (RMS = norm / √numel); parameters
    recorded without a gradient (unused) or with a zero one come first."""
    if not latest:
        return figures.empty_figure("no run selected")
    run, rank = latest["run"], latest["rank"]
    try:
        at = src.stats_step(run, rank, (state or {}).get("step"))
        if at is None:
            return figures.empty_figure("no statistics recorded yet")
        table = src.stats_at(run, rank, at, "param", ("grad_norm", "grad_absmax"))
        names = src.reader(run, rank).keys("param")
        version = src.version_at(run, rank, at)
        params = src.graph(run, rank, version).params if version is not None else {}
    except READ_ERRORS as exc:
        return figures.empty_figure(f"cannot read gradients: {exc}")
    numel = {}
    for name in names:
        node = params.get(name)
        numel[name] = node.outputs[0].numel if node is not None and node.outputs and node.outputs[0] else 0
    flow = build_flow(names, table["grad_norm"], table["grad_absmax"], numel, max_rows=FLOW_MAX_ROWS)
    return _keep_zoom(figures.flow_figure(flow, at), run)


def heatmap_figure(src, triggered, latest, state):
    if only_step(triggered):
        return step_patch(state)
    if not latest:
        return figures.empty_figure("no run selected")
    try:
        heat = src.heat(latest["run"], latest["rank"], "grad_norm")
    except READ_ERRORS as exc:
        return figures.empty_figure(f"cannot read gradients: {exc}")
    return _keep_zoom(figures.heatmap_figure(heat, (state or {}).get("step")), latest["run"])


# -- graph versions ----------------------------------------------------------------------
def extra_cards(latest):
    """The version and rank sections show only when there is something to compare."""
    versions = len((latest or {}).get("versions", []))
    ranks = len((latest or {}).get("ranks", []))
    return ("gva-card gva-versions" + ("" if versions > 1 else " gva-hidden"),
            "gva-card gva-ranks" + ("" if ranks > 1 else " gva-hidden"))



def version_options(latest, a, b):
    versions = (latest or {}).get("versions", [])
    options = [{"label": f"v{v} from step {first} ({n} nodes)", "value": v} for v, first, n in versions]
    known = [v for v, _first, _n in versions]
    b_value = b if b in known else (known[-1] if known else None)
    a_value = a if a in known else (known[-2] if len(known) > 1 else b_value)
    return options, a_value, options, b_value


def union_graph(a: Graph, b: Graph) -> tuple[Graph, set[str], set[str]]:
    """Nodes and edges of both versions, and the ids added in ``b`` and removed from ``a``."""
    added = {n.id for n in b.nodes} - {n.id for n in a.nodes}
    removed = {n.id for n in a.nodes} - {n.id for n in b.nodes}
    nodes: list[Node] = list(b.nodes) + [n for n in a.nodes if n.id in removed]
    edges: dict[tuple[str, str], Edge] = {(e.src, e.dst): e for e in b.edges}
    for e in a.edges:
        edges.setdefault((e.src, e.dst), e)
    return Graph(nodes=tuple(nodes), edges=tuple(edges.values()),
                 roots=tuple(dict.fromkeys(b.roots + a.roots))), added, removed


def diff_view(src, latest, va, vb, current_layout=None):
    """The union of two graph versions, added nodes green and removed ones red (dashed);
    modules without any change are folded."""
    if not latest or va is None or vb is None:
        return [], no_update, [panels.html.P("no graph versions recorded", className="gva-hint")]
    run, rank = latest["run"], latest["rank"]
    firsts = {v: first for v, first, _n in latest.get("versions", [])}
    try:
        ga, gb = src.graph(run, rank, va), src.graph(run, rank, vb)
    except READ_ERRORS as exc:
        return [], no_update, [panels.html.P(f"cannot read graph versions: {exc}")]
    union, added, removed = union_graph(ga, gb)
    classes = {i: "added" for i in added} | {i: "removed" for i in removed}

    def make():
        view = fold(union, unchanged_modules(union, added | removed))
        if len(view.graph) > DIFF_MAX_NODES:        # a rewrite, not an edit: fold more
            view = fold(union, view.folded | auto_fold(union, DIFF_MAX_NODES))
        for gid, members in view.members.items():     # a folded module holding changes is marked
            if any(m in classes for m in members):
                classes[gid] = "changed"
        return build_scene(view, src.layout_engine, classes)
    scene = src.cached(("diff", ga.fingerprint(), gb.fingerprint()), make)
    info = panels.diff_summary(sorted(added), sorted(removed), va, vb, firsts.get(va), firsts.get(vb))
    key = f"{run}|{rank}|{va}|{vb}|{ga.fingerprint()}|{gb.fingerprint()}"
    if (current_layout or {}).get("key") == key:
        return no_update, no_update, no_update
    return scene.elements, {**preset_layout(), "fit": True, "padding": 20, "key": key}, info


# -- ranks --------------------------------------------------------------------------------
def rank_options(latest, a, b):
    ranks = (latest or {}).get("ranks", [])
    options = _opts(ranks)
    a_value = a if a in ranks else (ranks[0] if ranks else None)
    b_value = b if b in ranks else (ranks[1] if len(ranks) > 1 else a_value)
    return options, a_value, options, b_value


def rank_figure(src, latest, a, b, stat, state):
    """``stat`` per parameter on two ranks at the selected step."""
    if not latest or a is None or b is None:
        return figures.empty_figure("no run selected")
    if len(latest.get("ranks", [])) < 2:
        return figures.empty_figure("single-rank run: nothing to compare")
    run, step = latest["run"], (state or {}).get("step")
    try:
        at_a, at_b = src.stats_step(run, a, step), src.stats_step(run, b, step)
        if at_a is None or at_b is None:
            return figures.empty_figure("no statistics recorded yet")
        va = src.stats_at(run, a, at_a, "param", (stat,))[stat]
        vb = src.stats_at(run, b, at_b, "param", (stat,))[stat]
    except READ_ERRORS as exc:
        return figures.empty_figure(f"cannot read ranks: {exc}")
    names = list(dict.fromkeys([*va, *vb]))
    return _keep_zoom(figures.rank_figure(names, [va.get(n) for n in names], [vb.get(n) for n in names],
                                      a, b, stat, at_a), run)
