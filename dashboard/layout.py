"""The page: a pure function of nothing but constants (no run is read to build it)."""
from __future__ import annotations

import dash_cytoscape as cyto
from dash import dcc, html

from graphviz_autograd.export.style import KIND_STYLE
from graphviz_autograd.graph.model import NodeKind

from . import ids
from . import spread_view
from .graph_view import DEFAULT_METRIC, METRICS, preset_layout, stylesheet

REFRESH_MS = 2500
MOUNT_FALLBACK_MS = 15000    # safety net: figures mount after the graph paints (or fails to)
RANK_STATS = ("grad_norm", "grad_absmax", "grad_zero_frac", "param_norm", "update_ratio")


def _dropdown(id_: str, placeholder: str, width: str = "14rem", **kw) -> dcc.Dropdown:
    return dcc.Dropdown(id=id_, placeholder=placeholder, clearable=False,
                        style={"width": width, "minWidth": width}, **kw)


def header() -> html.Header:
    return html.Header(className="gva-header", children=[
        html.H1("graphviz-autograd"),
        html.Label("run", htmlFor=ids.RUN), _dropdown(ids.RUN, "choose a run", "18rem"),
        html.Label("rank", htmlFor=ids.RANK), _dropdown(ids.RANK, "rank", "6rem"),
        dcc.Checklist(id=ids.LIVE, options=[{"label": " live", "value": "live"}], value=["live"],
                      className="gva-live"),
        html.Div(id=ids.STATUS, className="gva-status"),
        html.Div(id=ids.SKIPPED, className="gva-skipped-row"),
    ])


def _figure(id_: str, height: str, **config) -> dcc.Graph:
    # The mode bar shows on hover only, at the top right; legends sit at the top left.
    return dcc.Graph(id=id_, config={"displaylogo": False, "displayModeBar": "hover", **config},
                     style={"height": height}, figure={"data": [], "layout": {}})


def deferred() -> dict[str, object]:
    """Slot id -> component mounted after the graph's first paint.

    Plotly's 4.8 MB bundle is evaluated when the first ``dcc.Graph`` appears and
    blocks the page for a second or more; mounting the figures later lets the
    autograd graph paint first.
    """
    return {
        ids.LOSS_SLOT: _figure(ids.LOSS, "260px", scrollZoom=True),
        ids.METRICS_SLOT: _figure(ids.METRICS, "260px"),
        ids.NODE_FIG_SLOT: _figure(ids.NODE_FIG, "260px"),
        ids.FLOW_SLOT: _figure(ids.FLOW, "520px"),
        ids.HEATMAP_SLOT: _figure(ids.HEATMAP, "520px"),
        ids.CMP_SLOT: html.Div([html.Div(id=ids.CMP_INFO, className="gva-hint"),
                                _figure(ids.CMP_FIG, "200px")]),
        ids.DIFF_SLOT: html.Div([
            html.Div(id=ids.DIFF_INFO, className="gva-diff-info"),
            cyto.Cytoscape(id=ids.DIFF_GRAPH, elements=[], layout=preset_layout(),
                           stylesheet=stylesheet(), minZoom=0.02, maxZoom=4, autoRefreshLayout=False,
                           style={"width": "100%", "height": "420px"}, className="gva-cy")]),
        ids.RANK_FIG_SLOT: _figure(ids.RANK_FIG, "380px"),
        ids.SPREAD_SLOT: spread_view.figure_component(),
    }


def _slot(id_: str, height: str) -> html.Div:
    return html.Div(id=id_, className="gva-slot", style={"minHeight": height})


def curves() -> html.Section:
    return html.Section(className="gva-card gva-curves", children=[
        html.Div(className="gva-curve-row", children=[
            html.Div(className="gva-loss-col", children=[
                _slot(ids.LOSS_SLOT, "260px"),
                html.Div(id=ids.INCIDENTS, className="gva-incidents gva-hidden")]),
            html.Div(className="gva-metrics", children=[
                dcc.Dropdown(id=ids.SCALARS, multi=True, placeholder="other scalars",
                             className="gva-scalars"),
                _slot(ids.METRICS_SLOT, "260px"),
            ]),
        ]),
    ])


def step_row() -> html.Div:
    return html.Div(className="gva-step-row", children=[
        html.Div(id=ids.STEP_LABEL, className="gva-step-label", children="step –"),
        html.Div(className="gva-slider", children=dcc.Slider(
            id=ids.STEP_SLIDER, min=0, max=1, step=1, value=0, updatemode="mouseup",
            marks=None, tooltip={"placement": "bottom", "always_visible": False})),
    ])


def kind_legend() -> html.Div:
    items = []
    for kind, (fill, border, _shape, _style, text) in KIND_STYLE.items():
        if kind is NodeKind.MODULE:
            text = "folded module (select, then unfold)"
        items.append(html.Span(className="gva-kind", children=[
            html.Span(className=f"gva-swatch gva-kind-{kind.value}",
                      style={"background": fill, "borderColor": border}), text]))
    return html.Div(className="gva-kinds", children=items)


def graph_section() -> html.Section:
    toolbar = html.Div(className="gva-toolbar", children=[
        html.Label("colour by", htmlFor=ids.METRIC),
        dcc.Dropdown(id=ids.METRIC, value=DEFAULT_METRIC, clearable=False, style={"width": "12rem"},
                     options=[{"label": m.label, "value": k, "title": m.help} for k, m in METRICS.items()]),
        dcc.Input(id=ids.SEARCH, type="search", placeholder="find op, module or parameter",
                  debounce=True, className="gva-search"),
        html.Span(id=ids.SEARCH_INFO, className="gva-search-info"),
        html.Button("fold / unfold selected", id=ids.FOLD_TOGGLE, disabled=True,
                    className="gva-button"),
        html.Button("fold all", id=ids.FOLD_ALL, className="gva-button"),
        html.Button("unfold all", id=ids.UNFOLD_ALL, className="gva-button"),
        html.Button("fit", id=ids.FIT, className="gva-button", title="show all of the graph"),
    ])
    # Elements are loaded by assets/dashboard.js from the ELEMENTS store, not through this
    # component's props; nodes are not draggable (positions come from the layout).
    graph = cyto.Cytoscape(
        id=ids.GRAPH, elements=[], layout=preset_layout(), stylesheet=stylesheet(),
        minZoom=0.02, maxZoom=4, autoRefreshLayout=False, boxSelectionEnabled=False,
        autoungrabify=True, responsive=True, style={"width": "100%", "height": "100%"},
        className="gva-cy")
    detail = html.Aside(className="gva-detail", children=[
        html.Div(id=ids.LEGEND),
        kind_legend(),
        html.Div(id=ids.DETAIL, children=html.P("Click a node to see its op, shapes, saved tensors "
                                                "and gradient statistics.", className="gva-hint")),
        _slot(ids.NODE_FIG_SLOT, "260px"),
        html.Div(id=ids.DETAIL_AT_STEP),
    ])
    return html.Section(className="gva-card gva-graph-card", children=[
        toolbar,
        step_row(),
        html.Div(className="gva-graph-row", children=[
            html.Div(className="gva-graph-col", children=[
                html.Div(className="gva-cy-wrap", children=[graph]),
                html.Div(className="gva-under", children=[
                    html.Span(id=ids.GRAPH_INFO, className="gva-graph-info")]),
            ]),
            detail]),
    ])


def flow_section() -> html.Section:
    return html.Section(className="gva-card gva-flow", children=[
        html.H2("Gradient flow"),
        html.Div(className="gva-two", children=[
            _slot(ids.FLOW_SLOT, "520px"), _slot(ids.HEATMAP_SLOT, "520px"),
        ]),
    ])


CMP_STATS = ("grad_norm", "grad_absmax", "grad_zero_frac", "param_norm", "update_ratio",
             "act_mean", "act_zero_frac")


def compare_runs_section() -> html.Section:
    """Runs side by side: loss, metrics and one statistic of several runs on a shared step axis."""
    return html.Section(id=ids.COMPARE, className="gva-card gva-compare", children=[
        html.H2("Compare runs"),
        html.Div(className="gva-toolbar", children=[
            dcc.Dropdown(id=ids.RUNS, multi=True, placeholder="pick runs to overlay",
                         className="gva-runs"),
            dcc.Dropdown(id=ids.CMP_KIND, value="param", clearable=False, style={"width": "9rem"},
                         options=[{"label": k, "value": k} for k in ("param", "node", "module")]),
            dcc.Dropdown(id=ids.CMP_KEY, placeholder="parameter / node / module",
                         style={"width": "20rem"}),
            dcc.Dropdown(id=ids.CMP_STAT, value="grad_norm", clearable=False, style={"width": "11rem"},
                         options=[{"label": s, "value": s} for s in CMP_STATS]),
        ]),
        _slot(ids.CMP_SLOT, "200px"),
    ])


def compare_section() -> html.Div:
    versions = html.Section(id=ids.VERSIONS_CARD, className="gva-card gva-versions", children=[
        html.H2("Graph versions"),
        html.Div(className="gva-toolbar", children=[
            html.Label("from", htmlFor=ids.VERSION_A), _dropdown(ids.VERSION_A, "version", "16rem"),
            html.Label("to", htmlFor=ids.VERSION_B), _dropdown(ids.VERSION_B, "version", "16rem"),
        ]),
        _slot(ids.DIFF_SLOT, "440px"),
    ])
    ranks = html.Section(id=ids.RANKS_CARD, className="gva-card gva-ranks", children=[
        html.H2("Ranks"),
        html.Div(className="gva-toolbar", children=[
            html.Label("rank", htmlFor=ids.RANK_A), _dropdown(ids.RANK_A, "rank", "6rem"),
            html.Label("vs", htmlFor=ids.RANK_B), _dropdown(ids.RANK_B, "rank", "6rem"),
            dcc.Dropdown(id=ids.RANK_STAT, value="grad_norm", clearable=False, style={"width": "12rem"},
                         options=[{"label": s, "value": s} for s in RANK_STATS]),
        ]),
        _slot(ids.RANK_FIG_SLOT, "380px"),
    ])
    return html.Div(className="gva-two gva-extra", children=[versions, ranks])


def stores() -> list:
    return [
        dcc.Location(id=ids.LOCATION, refresh=False),
        dcc.Interval(id=ids.INTERVAL, interval=REFRESH_MS),
        dcc.Interval(id=ids.MOUNT_TIMER, interval=MOUNT_FALLBACK_MS, max_intervals=1),
        dcc.Store(id=ids.MOUNTED, data=False), dcc.Store(id=ids.PICKED),
        dcc.Store(id=ids.LATEST), dcc.Store(id=ids.STEP, data={"step": None, "follow": True}),
        dcc.Store(id=ids.GRAPH_KEY), dcc.Store(id=ids.ELEMENTS), dcc.Store(id=ids.COLORS),
        dcc.Store(id=ids.PAINTED),
        dcc.Store(id=ids.SEARCH_RESULT), dcc.Store(id=ids.FOCUSED),
        dcc.Store(id=ids.FOLDED, data={"mode": "auto"}), dcc.Store(id=ids.SELECTED),
        dcc.Store(id=ids.INCIDENT), dcc.Store(id=ids.OUTLINED), dcc.Store(id=ids.OUTLINE_DONE),
    ]


def build_layout() -> html.Div:
    """The whole page, figures still in their slots (see :func:`deferred`)."""
    return html.Div(className="gva", children=[
        *stores(), header(), graph_section(), curves(), spread_view.section(), flow_section(),
        compare_runs_section(), compare_section(),
    ])


def validation_layout() -> html.Div:
    """The page with every deferred component in place: what callbacks are checked against."""
    return html.Div([build_layout(), *deferred().values()])
