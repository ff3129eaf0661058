"""Plotly figures as plain dicts (fast to build, easy to test): curves, gradient flow, heat maps.

Names from the run (parameters, modules) go through :func:`plot_text` before they
reach plotly, whose text renderer would otherwise read tags such as ``<b>``.
"""
from __future__ import annotations

import math

STEP_COLOR = "#d62728"
GL_THRESHOLD = 2000             # WebGL traces past this many points
FONT = {"family": "Helvetica, Arial, sans-serif", "size": 11}
LINE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def plot_text(s: object) -> str:
    """Text that plotly shows literally (its labels understand a few HTML tags and entities)."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clean(values) -> list:
    """JSON-safe numbers: NaN and infinities become None (gaps)."""
    return [v if v is not None and math.isfinite(v) else None for v in values]


def step_shape(step: int | None, yref: str = "paper") -> list[dict]:
    """The vertical marker of the selected step (a list of plotly shapes)."""
    if step is None:
        return []
    return [{"type": "line", "xref": "x", "yref": yref, "x0": step, "x1": step, "y0": 0, "y1": 1,
             "line": {"color": STEP_COLOR, "width": 1.5, "dash": "dot"}}]


def base_layout(title: str = "", **extra) -> dict:
    layout = {"margin": {"l": 55, "r": 15, "t": 32 if title else 12, "b": 36}, "font": FONT,
              "plot_bgcolor": "#ffffff", "paper_bgcolor": "#ffffff", "showlegend": False,
              "xaxis": {"gridcolor": "#eeeeee", "zeroline": False},
              "yaxis": {"gridcolor": "#eeeeee", "zeroline": False}}
    if title:
        layout["title"] = {"text": plot_text(title), "font": {"size": 13}, "x": 0.01}
    layout.update(extra)
    return layout


def empty_figure(message: str) -> dict:
    return {"data": [], "layout": base_layout(
        xaxis={"visible": False}, yaxis={"visible": False},
        annotations=[{"text": plot_text(message), "showarrow": False, "xref": "paper",
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
        layout["yaxis"]["type"] = "log"
    return {"data": [trace], "layout": layout}


def metrics_figure(series: dict[str, tuple[list[int], list[float]]], step: int | None,
                   revision: str) -> dict:
    """Other scalars (lr, accuracy, ...), one stacked panel each, sharing the step axis."""
    if not series:
        return empty_figure("no other scalars logged")
    names = list(series)[:4]
    n = len(names)
    gap = 0.06
    height = (1 - gap * (n - 1)) / n
    layout = base_layout("", uirevision=revision, hovermode="x", dragmode="select",
                         selectdirection="h", shapes=step_shape(step))
    data = []
    for i, name in enumerate(names):
        axis = "" if i == 0 else str(i + 1)
        top = 1 - i * (height + gap)
        layout[f"yaxis{axis}"] = {"domain": [max(0.0, top - height), top], "gridcolor": "#eeeeee",
                                  "title": {"text": plot_text(name), "font": {"size": 10}},
                                  "zeroline": False}
        steps, values = series[name]
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
    for i, (name, (steps, values)) in enumerate(series.items()):
        data.append(_line(steps, values, name, LINE_COLORS[i % len(LINE_COLORS)],
                          hovertemplate=f"{plot_text(name)} %{{y:.3g}} @ %{{x}}<extra></extra>"))
        positive &= all(v is None or not math.isfinite(v) or v > 0 for v in values)
    layout = base_layout(title, showlegend=True, uirevision=revision, shapes=step_shape(step),
                         legend={"orientation": "h", "y": -0.25, "font": {"size": 10}})
    layout["xaxis"]["title"] = {"text": "step"}
    if positive:
        layout["yaxis"]["type"] = "log"
    return {"data": data, "layout": layout}


def flow_figure(names: list[str], rms: list[float | None], absmax: list[float | None],
                step: int | None) -> dict:
    """The classic gradient-flow chart: max and RMS |grad| per layer (parameter), log y."""
    if not names:
        return empty_figure("no parameter gradients recorded")
    labels = [plot_text(n) for n in names]
    bars = [
        {"type": "bar", "x": labels, "y": _clean(absmax), "name": "max |grad|",
         "marker": {"color": "#9ecae1"}, "hovertemplate": "%{x}<br>max |grad| %{y:.3g}<extra></extra>"},
        {"type": "bar", "x": labels, "y": _clean(rms), "name": "RMS |grad|",
         "marker": {"color": "#08519c"}, "hovertemplate": "%{x}<br>RMS |grad| %{y:.3g}<extra></extra>"},
    ]
    layout = base_layout(f"gradient flow at step {step}", barmode="overlay", showlegend=True,
                         legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"})
    layout["yaxis"].update(type="log", title={"text": "|grad|"})
    layout["xaxis"].update(tickangle=-45, automargin=True, tickfont={"size": 9})
    layout["margin"]["b"] = 90
    return {"data": bars, "layout": layout}


def heatmap_figure(keys: list[str], steps: list[int], grid: list[list[float | None]],
                   step: int | None, stat: str = "grad_norm") -> dict:
    """Layer x step heat map of log10(``stat``): vanishing (blue) and exploding (red) at a glance."""
    if not keys or not steps:
        return empty_figure("no parameter statistics recorded")
    z = [[math.log10(v) if v is not None and math.isfinite(v) and v > 0 else None for v in row]
         for row in grid]
    trace = {"type": "heatmap", "x": list(steps), "y": [plot_text(k) for k in keys], "z": z,
             "colorscale": "RdYlBu", "reversescale": False, "hoverongaps": False,
             "colorbar": {"title": {"text": f"log10 {stat}", "side": "right"}, "thickness": 12},
             "hovertemplate": "%{y}<br>step %{x}<br>log10 %{z:.2f}<extra></extra>"}
    layout = base_layout(f"log10 {stat} per layer (weights) over steps", shapes=step_shape(step))
    layout["yaxis"].update(autorange="reversed", automargin=True, tickfont={"size": 9})
    layout["xaxis"]["title"] = {"text": "step"}
    return {"data": [trace], "layout": layout}


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
    layout = base_layout(title, barmode="group", showlegend=True,
                         legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"})
    if values and min(values) > 0:
        layout["yaxis"]["type"] = "log"
    layout["xaxis"].update(tickangle=-45, automargin=True, tickfont={"size": 9})
    layout["margin"]["b"] = 90
    return {"data": data, "layout": layout}
