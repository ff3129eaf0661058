"""The "Spread over ranks" card of a gathered run (``Recorder(ranks="gather")``): one
parameter statistic's min–max band over the ranks, its mean, the outlier ranks marked; a click
on an outlier shows that rank's own statistics at that step where the run kept them.

The figure is :func:`dashboard.spread.spread_figure`; the card is hidden for any other run.

Example:
    >>> widest({"a": ([0, 1], [1.0, 1.0], [1.0, 1.1], [1.0, 1.2]), "b": ([0], [1.0], [2.0], [9.0])})
    'b'
"""
from __future__ import annotations

import math

from dash import Patch, dcc, html, no_update

from graphviz_autograd.errors import GraphvizAutogradError
from graphviz_autograd.export.labels import plural
from graphviz_autograd.store.spread import is_gathered

from . import ids
from .data import DataSource
from .figures import step_shape
from .graph_view import fmt_value
from .spread import spread_figure

STATS = ("grad_norm", "grad_absmax", "grad_zero_frac", "param_norm", "update_ratio")
DETAIL_STATS = ("grad_norm", "grad_absmax", "grad_nan", "grad_inf", "param_norm", "update_ratio")
HIDDEN, SHOWN = "gva-card gva-spread gva-hidden", "gva-card gva-spread"
READ_ERRORS = (GraphvizAutogradError, KeyError, OSError, ValueError)   # as dashboard.callbacks
HINT = ("Click a red outlier marker (or the band's edge) to see that rank's own statistics "
        "at that step.")


def section() -> html.Section:
    """The card (hidden until a gathered run is shown); its figure mounts in SPREAD_SLOT."""
    return html.Section(id=ids.SPREAD_CARD, className=HIDDEN, children=[
        html.H2("Spread over ranks"),
        html.Div(className="gva-toolbar", children=[
            html.Label("parameter", htmlFor=ids.SPREAD_KEY),
            dcc.Dropdown(id=ids.SPREAD_KEY, clearable=False, placeholder="parameter",
                         style={"width": "20rem"}),
            dcc.Dropdown(id=ids.SPREAD_STAT, value="grad_norm", clearable=False,
                         style={"width": "11rem"}, options=[{"label": s, "value": s} for s in STATS]),
        ]),
        html.Div(id=ids.SPREAD_SLOT, className="gva-slot", style={"minHeight": "320px"}),
    ])


def figure_component() -> html.Div:
    """What mounts in SPREAD_SLOT after the graph's first paint: the chart, the line above it
    and the clicked outlier's detail beside it (together, so no callback sees half of them)."""
    fig = dcc.Graph(id=ids.SPREAD_FIG, config={"displaylogo": False, "displayModeBar": "hover"},
                    style={"height": "300px"}, figure={"data": [], "layout": {}})
    return html.Div(className="gva-spread-row", children=[
        html.Div([html.Div(id=ids.SPREAD_INFO, className="gva-hint"), fig]),
        html.Div(id=ids.SPREAD_DETAIL, className="gva-spread-detail",
                 children=html.P(HINT, className="gva-hint"))])


def widest(spreads: dict[str, tuple]) -> str | None:
    """The key whose band is widest relative to its mean at some step (``key -> (steps, min,
    mean, max)``); None when there is none."""
    best, best_width = None, -1.0
    for key, (_steps, lo, mean, hi) in spreads.items():
        for a, m, b in zip(lo, mean, hi):
            if None in (a, m, b) or not all(map(math.isfinite, (a, m, b))):
                continue
            width = (b - a) / max(abs(m), 1e-12)
            if width > best_width:
                best, best_width = key, width
    return best if best is not None else next(iter(spreads), None)


def outlier_marks(outliers, spread, run, key: str, stat: str) -> list[tuple]:
    """``(step, rank, value, why)`` for the figure: the rank's own value of ``stat`` where kept,
    else None (drawn at the top of the band, labelled "not kept")."""
    marks = []
    for o in outliers:
        value = None
        if o.detail:
            value = run.rank_stats_at(o.step, o.rank, "param", (stat,)).get(stat, {}).get(key)
        marks.append((o.step, o.rank, value, o.why))
    return marks


# -- callbacks (wired in app.register) --------------------------------------------------------
def _gathered(src: DataSource, latest) -> bool:
    try:
        return bool(latest) and is_gathered(src.run(latest["run"]).meta)
    except READ_ERRORS:
        return False


def key_options(src: DataSource, trigger, latest, selected, stat, graph_key, current):
    """Card class, parameter options and value: the selected node's parameter, else the one with
    the widest spread."""
    if not _gathered(src, latest):
        return HIDDEN, [], None
    run = src.run(latest["run"])
    stat = stat if stat in STATS else "grad_norm"
    keys = run.keys("param@mean")
    options = [{"label": k, "value": k} for k in keys]
    if trigger == ids.SELECTED and isinstance(selected, str) and selected.startswith("param:"):
        wanted = selected[len("param:"):]
        if wanted in keys:
            return SHOWN, options, wanted
    if current in keys:
        return SHOWN, options, no_update
    spreads = src.cached(("widest", latest["run"], latest.get("latest"), stat), lambda: {
        k: tuple(run.rank_spread(k, stat))[:4] for k in keys})
    return SHOWN, options, widest(spreads)


def figure(src: DataSource, triggered, latest, key, stat, state):
    """The band chart and the line above it (a new selected step only moves its marker)."""
    if triggered and set(triggered) <= {ids.STEP}:
        patch = Patch()
        patch["layout"]["shapes"] = step_shape((state or {}).get("step"))
        return patch, no_update
    if not key or not _gathered(src, latest):
        return spread_figure([], [], [], [], [], []), ""
    run = src.run(latest["run"])
    stat = stat if stat in STATS else "grad_norm"
    try:
        s = run.rank_spread(key, stat)
        outliers = run.outliers()
        marks = outlier_marks(outliers, s, run, key, stat)
    except READ_ERRORS as exc:
        return spread_figure([], [], [], [], [], [], title=f"cannot read the spread: {exc}"), ""
    world = run.world_size
    fig = spread_figure(s.steps, s.min, s.mean, s.max, s.min_rank, s.max_rank, outliers=marks,
                        title=f"{stat} of {key} over {plural(world, 'rank')}: min–max band, mean line",
                        step=(state or {}).get("step"), revision=f"{latest['run']}|{key}|{stat}")
    info = (f"{plural(len(outliers), 'outlier')} flagged" if outliers else "no outlier rank flagged")
    return fig, info


def detail(src: DataSource, click, latest, key):
    """A clicked outlier's (or band edge's) rank: its statistics at that step, or why they are
    not there."""
    point = ((click or {}).get("points") or [{}])[0]
    custom = point.get("customdata")
    if isinstance(custom, list) and len(custom) == 2:          # an outlier marker
        step, rank = int(custom[0]), int(custom[1])
    elif isinstance(custom, str) and custom.isdigit() and isinstance(point.get("x"), int):
        step, rank = point["x"], int(custom)                   # the band's edge: the rank there
    else:
        return no_update
    if not latest:
        return no_update
    run = src.run(latest["run"])
    try:
        flags = [o for o in run.outliers(step) if o.rank == rank]
        table = run.rank_stats_at(step, rank, "param", DETAIL_STATS)
        loss = run.scalar_at(f"loss@rank{rank}", step)
    except READ_ERRORS as exc:
        return html.P(f"cannot read rank {rank} at step {step}: {exc}", className="gva-hint")
    children: list = [html.H4(f"rank {rank} at step {step}")]
    children += [html.P(f.why, className="gva-spread-why") for f in flags]
    if loss is not None:
        children.append(html.P(f"its loss: {fmt_value(loss)}"))
    rows = [html.Tr([html.Th(stat), html.Td(fmt_value(values[key]))])
            for stat, values in table.items() if key in values]
    if rows:
        children += [html.P(f"{key}, this rank's own values:", className="gva-hint"),
                     html.Table(html.Tbody(rows), className="gva-props")]
    else:
        children.append(html.P(f"rank {rank}'s statistics of {key} at step {step} were not stored: "
                               "the run keeps one rank's statistics only for detail_ranks and for "
                               "outliers at recorded steps.", className="gva-spread-missing"))
    return children
