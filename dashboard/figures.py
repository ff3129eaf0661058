"""Plotly figures as plain dicts (fast to build, easy to test): curves, gradient flow, heat maps.

Names from the run (parameters, modules) go through :func:`plot_text` before they
reach plotly, whose text renderer would otherwise read tags such as ``<b>``.
"""
from __future__ import annotations

import math
import re
import textwrap

from .gradients import MISSING, NONFINITE, STATE_NAMES, VALUE, ZERO, Flow, Heat
from .names import AXIS_MOST, SHOWN_MOST, short_name

STEP_COLOR = "#d62728"
GL_THRESHOLD = 2000             # WebGL traces past this many points
FONT = {"family": "Helvetica, Arial, sans-serif", "size": 11}
LINE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def plot_text(s: object, most: int = SHOWN_MOST) -> str:
    """Text that plotly shows literally (its labels understand a few HTML tags and entities),
    at most ``most`` characters (cut in the middle: a 1 MB name must not reach plotly)."""
    return short_name(s, most).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clean(values) -> list:
    """JSON-safe numbers: NaN and infinities become None (gaps)."""
    return [v if v is not None and math.isfinite(v) else None for v in values]


def step_shape(step: int | None, yref: str = "paper") -> list[dict]:
    """The vertical marker of the selected step (a list of plotly shapes)."""
    if step is None:
        return []
    return [{"type": "line", "xref": "x", "yref": yref, "x0": step, "x1": step, "y0": 0, "y1": 1,
             "line": {"color": STEP_COLOR, "width": 1.5, "dash": "dot"}}]


# Gradient states that a log scale cannot show (and the graph's colours use too).
STATE_COLORS = {ZERO: "#1a1a1a", MISSING: "#bdbdbd", NONFINITE: "#7b2cbf"}
# Blue (small / vanishing) -> yellow -> red (large / exploding), as in the graph's colours.
PALETTE = ["#3b56a5", "#4470b1", "#4f8bc0", "#63a3cc", "#7cb9d8", "#98cde3", "#b3dfec",
           "#cbebf0", "#e1f3ec", "#f2f9d9", "#fffcc0", "#fff0a8", "#fee090", "#fdc97a",
           "#fdb165", "#fa9656", "#f47a4b", "#e95c3c", "#da3e2f", "#c52527", "#b0122a"]
_LR = re.compile(r"(^|[/_.])lr($|[/_.\d])|learning.?rate", re.IGNORECASE)


def is_learning_rate(name: str) -> bool:
    """``lr``, ``lr/0``, ``group1_lr``, ``learning_rate``: scalars drawn on a log axis."""
    return bool(_LR.search(name))


def log_axis(lo: float | None = None, hi: float | None = None, **extra) -> dict:
    """A log axis whose every tick label is a full number (never a bare "2" or "5"); given its
    range, ticks at 1-2-5 per decade up to 3 decades, powers of ten beyond (labels never crowd)."""
    axis = {"type": "log", "tickformat": ".2~g", "exponentformat": "e"}
    if lo and hi and hi > lo > 0:
        decades = math.log10(hi / lo)
        axis["dtick"] = "D2" if decades <= 3 else (1 if decades <= 10 else 2)
    axis.update(extra)
    return axis


def base_layout(title: str = "", **extra) -> dict:
    """Title at the top left, legend (when shown) under it, the mode bar at the top right."""
    layout = {"margin": {"l": 55, "r": 15, "t": 32 if title else 12, "b": 40}, "font": FONT,
              "plot_bgcolor": "#ffffff", "paper_bgcolor": "#ffffff", "showlegend": False,
              "xaxis": {"gridcolor": "#eeeeee", "zeroline": False},
              "yaxis": {"gridcolor": "#eeeeee", "zeroline": False},
              "legend": {"orientation": "h", "x": 0, "xanchor": "left", "y": 1.0,
                         "yanchor": "bottom", "font": {"size": 11}}}
    if title:
        layout["title"] = {"text": plot_text(title), "font": {"size": 13}, "x": 0.01,
                           "xanchor": "left", "y": 0.99, "yanchor": "top", "yref": "container"}
    layout.update(extra)
    if layout.get("showlegend"):
        layout["margin"]["t"] = max(layout["margin"]["t"], 58 if title else 30)
    return layout


def empty_figure(message: str, width: int = 72) -> dict:
    """A figure that only says ``message`` (wrapped to lines of ``width`` characters: an error
    naming a file must be read whole, not cut at the figure's edges)."""
    lines = textwrap.wrap(short_name(message, 600), width) or [""]
    return {"data": [], "layout": base_layout(
        xaxis={"visible": False}, yaxis={"visible": False},
        annotations=[{"text": "<br>".join(plot_text(line) for line in lines), "showarrow": False,
                      "xref": "paper",
                      "yref": "paper", "x": 0.5, "y": 0.5, "font": {"size": 13, "color": "#777"}}])}


def _line(x, y, name: str, color: str, **extra) -> dict:
    trace = {"type": "scattergl" if len(x) > GL_THRESHOLD else "scatter", "mode": "lines",
             "x": list(x), "y": _clean(y), "name": plot_text(name),
             "line": {"color": color, "width": 1.5}}
    trace.update(extra)
    return trace


def loss_figure(steps: list[int], values: list[float], step: int | None, revision: str,
                name: str = "loss") -> dict:
    """The loss by step; drag a box or click a point to pick a step."""
    if not steps:
        return empty_figure("no loss logged yet")
    trace = _line(steps, values, name, LINE_COLORS[0], hovertemplate="step %{x}<br>%{y:.4g}<extra></extra>")
    trace["mode"] = "lines+markers" if len(steps) <= 200 else "lines"
    trace["marker"] = {"size": 4}
    finite = [v for v in values if v is not None and math.isfinite(v)]
    log = bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 1e3
    layout = base_layout(name, dragmode="select", selectdirection="h", uirevision=revision,
                         hovermode="closest", shapes=step_shape(step))
    layout["xaxis"].update(title={"text": "step"})
    if log:
        layout["yaxis"].update(log_axis(min(finite), max(finite)))
    return {"data": [trace], "layout": layout}


def metrics_figure(series: dict[str, tuple[list[int], list[float]]], step: int | None,
                   revision: str) -> dict:
    """Other scalars (lr, accuracy, ...), one stacked panel each, sharing the step axis.

    A scalar with nothing finite logged gets no panel; learning rates (and any positive
    scalar spanning 1,000x) get a log axis, so 0.01 or 1e-4 is not a flat line at 0."""
    series = {k: v for k, v in series.items()
              if any(x is not None and math.isfinite(x) for x in v[1])}
    if not series:
        return empty_figure("no other scalars logged")
    names = list(series)[:4]
    n = len(names)
    gap = 0.08
    height = (1 - gap * (n - 1)) / n
    layout = base_layout("", uirevision=revision, hovermode="x", dragmode="select",
                         selectdirection="h", shapes=step_shape(step))
    data = []
    for i, name in enumerate(names):
        axis = "" if i == 0 else str(i + 1)
        top = 1 - i * (height + gap)
        steps, values = series[name]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        positive = min(finite) > 0
        log = positive and (is_learning_rate(name) or max(finite) / min(finite) > 1e3)
        label = plot_text(name, AXIS_MOST) + (" (log)" if log else "")
        yaxis = {"domain": [max(0.0, top - height), top], "gridcolor": "#eeeeee", "zeroline": False,
                 "title": {"text": label, "font": {"size": 11}}}
        if log:
            yaxis.update(log_axis(min(finite), max(finite)))
        layout[f"yaxis{axis}"] = yaxis
        data.append(_line(steps, values, name, LINE_COLORS[(i + 1) % len(LINE_COLORS)],
                          yaxis=f"y{axis}", hovertemplate=f"{plot_text(name)} %{{y:.4g}}<extra></extra>"))
    layout["xaxis"].update(title={"text": "step"}, anchor=f"y{n if n > 1 else ''}")
    return {"data": data, "layout": layout}


def node_figure(series: dict[str, tuple[list[int], list[float]]], step: int | None,
                title: str, revision: str) -> dict:
    """Statistics of one node over every recorded step (log y), the selected step marked."""
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return empty_figure("no statistics recorded for this node")
    data = []
    positive = True
    seen: list[float] = []
    for i, (name, (steps, values)) in enumerate(series.items()):
        data.append(_line(steps, values, name, LINE_COLORS[i % len(LINE_COLORS)],
                          hovertemplate=f"{plot_text(name)} %{{y:.3g}} @ %{{x}}<extra></extra>"))
        positive &= all(v is None or not math.isfinite(v) or v > 0 for v in values)
        seen += [v for v in values if v is not None and math.isfinite(v)]
    layout = base_layout(title, showlegend=True, uirevision=revision, shapes=step_shape(step))
    layout["xaxis"]["title"] = {"text": "step"}
    if positive and seen:
        layout["yaxis"].update(log_axis(min(seen), max(seen)))
    return {"data": data, "layout": layout}


def _state_legend(states: set[int]) -> list[dict]:
    """Legend entries (empty traces) for the gradient states present."""
    return [{"type": "scatter", "mode": "markers", "x": [None], "y": [None], "name": STATE_NAMES[st],
             "marker": {"symbol": "square", "size": 12, "color": STATE_COLORS[st]},
             "hoverinfo": "skip", "showlegend": True} for st in (ZERO, MISSING, NONFINITE) if st in states]


def flow_figure(flow: Flow, step: int | None) -> dict:
    """The gradient-flow chart: max and RMS |grad| per parameter (or module group), log scale,
    one row each; zero, missing and non-finite gradients get their own colour and come first."""
    if not flow.labels:
        return empty_figure("no parameter gradients recorded")
    labels = [plot_text(n) for n in flow.labels]
    values = [v for v in flow.rms + flow.absmax if v is not None and v > 0]
    lo = min(values) / 10 if values else 1e-8
    hi = max(values) * 3 if values else 1.0
    bars = [
        {"type": "bar", "orientation": "h", "y": labels, "x": _clean(flow.absmax), "name": "max |grad|",
         "marker": {"color": "#9ecae1"}, "hovertemplate": "%{y}<br>max |grad| %{x:.3g}<extra></extra>"},
        {"type": "bar", "orientation": "h", "y": labels, "x": _clean(flow.rms), "name": "RMS |grad|",
         "marker": {"color": "#08519c"}, "hovertemplate": "%{y}<br>RMS |grad| %{x:.3g}<extra></extra>"},
    ]
    flagged = [i for i, st in enumerate(flow.state) if st != VALUE]
    if flagged:              # a log axis has no place for 0: a marked row at its left edge
        bars.append({"type": "bar", "orientation": "h", "y": [labels[i] for i in flagged],
                     "x": [hi - lo] * len(flagged), "base": [lo] * len(flagged),
                     "marker": {"color": [STATE_COLORS[flow.state[i]] for i in flagged],
                                "opacity": 0.35},
                     "text": [STATE_NAMES[flow.state[i]] for i in flagged], "textposition": "inside",
                     "insidetextanchor": "start", "textfont": {"color": "#1a1a1a", "size": 11},
                     "showlegend": False, "name": "problem",
                     "hovertemplate": "%{y}<br>%{text}<extra></extra>"})
    bars += _state_legend({flow.state[i] for i in flagged})
    grouped = sum(m > 1 for m in flow.members)
    title = f"gradient flow at step {step}" + (" · modules grouped" if grouped else "")
    layout = base_layout(title, barmode="overlay", showlegend=True)
    layout["xaxis"].update(log_axis(lo, hi, range=[math.log10(lo), math.log10(hi)],
                                    title={"text": "|grad|"}))
    layout["yaxis"].update(autorange="reversed", automargin=True, tickfont={"size": 11})
    return {"data": bars, "layout": layout}


def heatmap_figure(heat: Heat, step: int | None, stat: str = "grad_norm") -> dict:
    """Layer x step heat map of log10(``stat``): every recorded step has a column (merged
    columns say how many steps they hold); zero, missing and NaN/Inf cells have their own
    colours and their rows come first."""
    if not heat.rows or not heat.firsts:
        return empty_figure("no parameter statistics recorded")
    labels = [plot_text(r) for r in heat.rows]
    custom = [[f"steps {a}–{b - 1} ({n} recorded)" if n > 1 else f"step {a}"
               for a, b, n in zip(heat.edges, heat.edges[1:], heat.counts)] for _ in heat.rows]
    n_colors = len(PALETTE)
    data = [{"type": "heatmap", "x": list(heat.edges), "y": labels, "z": heat.z,
             "colorscale": [[i / (n_colors - 1), c] for i, c in enumerate(PALETTE)],
             "hoverongaps": False, "customdata": custom,
             "colorbar": {"title": {"text": f"log10 {stat}", "side": "right"}, "thickness": 12},
             "hovertemplate": "%{y}<br>%{customdata}<br>log10 %{z:.2f}<extra></extra>"}]
    states = {st for row in heat.state for st in row if st != VALUE}
    if states:
        special = [[st if st != VALUE else None for st in row] for row in heat.state]
        names = [[STATE_NAMES.get(st, "") for st in row] for row in heat.state]
        scale = []
        for k, st in enumerate((ZERO, MISSING, NONFINITE)):
            scale += [[k / 3, STATE_COLORS[st]], [(k + 1) / 3, STATE_COLORS[st]]]
        data.append({"type": "heatmap", "x": list(heat.edges), "y": labels, "z": special,
                     "zmin": 0.5, "zmax": 3.5, "colorscale": scale, "showscale": False,
                     "hoverongaps": False, "customdata": custom, "text": names,
                     "hovertemplate": "%{y}<br>%{customdata}<br>%{text}<extra></extra>"})
    data += _state_legend(states)
    merged = max(heat.counts) > 1
    title = (f"log10 {stat} per layer · {sum(heat.counts)} recorded steps"
             + (" (neighbouring steps merged)" if merged else ""))
    layout = base_layout(title, shapes=step_shape(step), showlegend=bool(states))
    layout["yaxis"].update(autorange="reversed", automargin=True, tickfont={"size": 11})
    layout["xaxis"]["title"] = {"text": "step"}
    return {"data": data, "layout": layout}


def rank_figure(names: list[str], a: list[float | None], b: list[float | None], rank_a: int,
                rank_b: int, stat: str, step: int | None) -> dict:
    """``stat`` per parameter for two ranks side by side, with the relative difference on hover."""
    if not names:
        return empty_figure("nothing recorded for these ranks at this step")
    labels = [plot_text(n) for n in names]
    rel = [None if x is None or y is None or not (x or y) else abs(x - y) / max(abs(x), abs(y))
           for x, y in zip(a, b)]
    data = [
        {"type": "bar", "x": labels, "y": _clean(a), "name": f"rank {rank_a}",
         "marker": {"color": "#1f77b4"}, "customdata": _clean(rel),
         "hovertemplate": "%{x}<br>%{y:.4g} (rel. diff %{customdata:.1%})<extra>rank " + str(rank_a) + "</extra>"},
        {"type": "bar", "x": labels, "y": _clean(b), "name": f"rank {rank_b}",
         "marker": {"color": "#ff7f0e"}, "customdata": _clean(rel),
         "hovertemplate": "%{x}<br>%{y:.4g} (rel. diff %{customdata:.1%})<extra>rank " + str(rank_b) + "</extra>"},
    ]
    worst = max((r for r in rel if r is not None), default=None)
    title = f"{stat} at step {step}: rank {rank_a} vs rank {rank_b}"
    if worst is not None:
        title += f" (max rel. diff {worst:.1%})"
    values = [v for v in _clean(a) + _clean(b) if v is not None]
    layout = base_layout(title, barmode="group", showlegend=True)
    if values and min(values) > 0:
        layout["yaxis"].update(log_axis(min(values), max(values)))
    layout["xaxis"].update(tickangle=-45, automargin=True, tickfont={"size": 11})
    layout["margin"]["b"] = 90
    return {"data": data, "layout": layout}
