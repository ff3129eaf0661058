"""The spread of one statistic over the ranks of a gathered run, as a plotly figure (a dict).

Steps on x; a band from the minimum to the maximum over the ranks, the mean as a line, and
the outlier ranks as labelled markers (their ``customdata`` is ``[step, rank]``, for a click
that opens the rank's detail). Hovering the band names the ranks holding the extremes. Pure:
plain lists in, a dict out (``run.rank_spread(...)`` and ``run.outliers()`` give the lists).

Example:
    >>> fig = spread_figure([0, 50], [0.1, 0.2], [0.3, 0.4], [0.5, 9.0], [2, 1], [3, 3],
    ...                     outliers=[(50, 3, 9.0, "loss 9 is far above the others")], title="loss")
    >>> [t["name"] for t in fig["data"]]
    ['max', 'min', 'mean', 'outlier ranks']
"""
from __future__ import annotations

import math

BAND = "rgba(31, 119, 180, 0.22)"
EDGE = "rgba(31, 119, 180, 0.55)"
MEAN = "#1f4e79"
OUTLIER = "#d62728"
STEP_COLOR = "#d62728"
FONT = {"family": "Helvetica, Arial, sans-serif", "size": 11}


def _text(s: object) -> str:
    """Text plotly shows literally (its labels read a few HTML tags and entities)."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _finite(values) -> list:
    return [v if v is not None and math.isfinite(v) else None for v in values]


def _ranks(values) -> list:
    return ["" if r is None else str(int(r)) for r in values]


def spread_figure(steps: list[int], mins: list, means: list, maxs: list, min_ranks: list,
                  max_ranks: list, *, outliers=(), title: str = "", step: int | None = None,
                  revision: str = "", log: bool | None = None) -> dict:
    """The band chart.

    Args:
        steps, mins, means, maxs, min_ranks, max_ranks: one value per recorded step (a
            ``Spread``'s fields); NaN and infinities leave gaps.
        outliers: ``(step, rank, value, why)`` of the flagged ranks to mark; a non-finite
            value is drawn at the top of the band and labelled with it (None: "value not kept").
        title: the chart's title (e.g. ``"grad_norm of fc1.weight over 512 ranks"``).
        step: the selected step, drawn as a dotted vertical line.
        revision: plotly ``uirevision`` (zoom survives updates with the same one).
        log: log y axis; None: when every value is positive and they span over 1000x.
    """
    if not steps:
        return {"data": [], "layout": _layout(title or "", revision, step, annotations=[
            {"text": "no spread over ranks recorded (a run gathered with ranks='gather' has one)",
             "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
             "font": {"size": 13, "color": "#777"}}], hidden=True)}
    lo, mean, hi = _finite(mins), _finite(means), _finite(maxs)
    hover = "step %{x}<br>" + "%{meta}: %{y:.4g} (rank %{customdata})<extra></extra>"
    data = [
        {"type": "scatter", "mode": "lines", "name": "max", "x": list(steps), "y": hi,
         "line": {"color": EDGE, "width": 1}, "customdata": _ranks(max_ranks), "meta": "max",
         "hovertemplate": hover},
        {"type": "scatter", "mode": "lines", "name": "min", "x": list(steps), "y": lo,
         "line": {"color": EDGE, "width": 1}, "fill": "tonexty", "fillcolor": BAND,
         "customdata": _ranks(min_ranks), "meta": "min", "hovertemplate": hover},
        {"type": "scatter", "mode": "lines+markers" if len(steps) <= 200 else "lines", "name": "mean",
         "x": list(steps), "y": mean, "line": {"color": MEAN, "width": 2}, "marker": {"size": 4},
         "hovertemplate": "step %{x}<br>mean over ranks: %{y:.4g}<extra></extra>"},
    ]
    finite = [v for v in lo + mean + hi if v is not None]
    top = max(finite) if finite else 1.0
    if outliers:
        xs, ys, labels, custom, whys = [], [], [], [], []
        for o_step, rank, value, why in outliers:
            shown = value is not None and math.isfinite(value)
            xs.append(o_step)
            ys.append(value if shown else top)
            labels.append(f"rank {rank}" if shown else
                          f"rank {rank} ({'value not kept' if value is None else value})")
            custom.append([o_step, rank])
            whys.append(_text(why))
        data.append({"type": "scatter", "mode": "markers+text", "name": "outlier ranks", "x": xs,
                     "y": ys, "text": labels, "textposition": "middle right", "cliponaxis": False,
                     "textfont": {"color": OUTLIER, "size": 11}, "customdata": custom,
                     "hovertext": whys, "hovertemplate": "%{hovertext}<extra>rank %{customdata[1]}</extra>",
                     "marker": {"color": OUTLIER, "size": 10, "symbol": "circle-open", "line": {"width": 2}}})
    layout = _layout(title, revision, step)
    layout["xaxis"]["title"] = {"text": "step"}
    if log is None:
        log = bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 1e3
    if log:
        layout["yaxis"]["type"] = "log"
    return {"data": data, "layout": layout}


def _layout(title: str, revision: str, step: int | None, annotations=None, hidden: bool = False) -> dict:
    layout = {"margin": {"l": 55, "r": 60, "t": 32 if title else 12, "b": 36}, "font": FONT,
              "plot_bgcolor": "#ffffff", "paper_bgcolor": "#ffffff", "showlegend": False,
              "hovermode": "closest", "uirevision": revision,
              "xaxis": {"gridcolor": "#eeeeee", "zeroline": False, "visible": not hidden},
              "yaxis": {"gridcolor": "#eeeeee", "zeroline": False, "visible": not hidden}}
    if title:
        layout["title"] = {"text": _text(title), "font": {"size": 13}, "x": 0.01}
    if annotations:
        layout["annotations"] = annotations
    if step is not None:
        layout["shapes"] = [{"type": "line", "xref": "x", "yref": "paper", "x0": step, "x1": step,
                             "y0": 0, "y1": 1, "line": {"color": STEP_COLOR, "width": 1.5, "dash": "dot"}}]
    return layout
