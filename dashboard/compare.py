"""Runs side by side: loss, metrics and one parameter/node/module statistic of several runs (and
ranks), overlaid on one shared step axis.

``/?runs=sgd,momentum,adam`` opens the page with those runs overlaid (names as the run
picker lists them; ``name@rank`` picks a rank of a multi-rank run, the first rank
otherwise). Callbacks are plain functions of (data source, inputs) -> outputs.

Example:
    >>> split_choice("ddp@1"), split_choice("sgd"), split_choice("a@b")
    (('ddp', 1), ('sgd', None), ('a@b', None))
"""
from __future__ import annotations

import math

from dash import no_update

from . import figures
from .callbacks import READ_ERRORS, url_params
from .names import AXIS_MOST
from .data import DataSource

MAX_RUNS = 8
MAX_METRICS = 3
ROW_PX, EXTRA_PX = 170, 110


def split_choice(choice: str) -> tuple[str, int | None]:
    """``"name@rank"`` -> ``(name, rank)``; a plain name (or a non-numeric ``@``) -> ``(name, None)``."""
    name, sep, rank = choice.rpartition("@")
    if sep and rank.isdigit():
        return name, int(rank)
    return choice, None


def run_choices(src: DataSource) -> list[str]:
    """Every run name, and ``name@rank`` for each rank of runs with more than one."""
    out: list[str] = []
    for name in src.run_names():
        out.append(name)
        try:
            ranks = src.run(name).ranks
        except READ_ERRORS:
            continue
        if len(ranks) > 1:
            out += [f"{name}@{r}" for r in ranks]
    return out


def runs_options(src: DataSource, search, _n, current, current_options):
    """RUNS options and value (from ``?runs=`` on first load), and the section's class (first
    on the page when the URL asked for a comparison)."""
    choices = run_choices(src)
    options = [{"label": c, "value": c} for c in choices]
    options_out = no_update if options == current_options else options
    asked = [c for c in url_params(search).get("runs", "").split(",") if c]
    if current is None:
        value = [c for c in asked if c in choices][:MAX_RUNS]
        section = "gva-card gva-compare" + (" gva-first" if value else "")
        return options_out, value, section
    return options_out, no_update, no_update


def key_options(src: DataSource, runs, kind, current):
    """Keys of ``kind`` recorded in every chosen run, in the first run's order."""
    keys: list[str] | None = None
    for choice in runs or []:
        try:
            found = src.reader(*split_choice(choice)).keys(kind)
        except READ_ERRORS:
            continue
        keys = found if keys is None else [k for k in keys if k in set(found)]
    keys = keys or []
    options = [{"label": k, "value": k} for k in keys]
    value = current if current in keys else (keys[0] if keys else None)
    return options, value


def compare_figure(src: DataSource, runs, kind, key, stat, _n):
    """The overlay figure, its height, and a line saying what is shown."""
    runs = [r for r in (runs or []) if r][:MAX_RUNS]
    if not runs:
        return (figures.empty_figure("pick runs above (or open /?runs=a,b) to overlay them"),
                {"height": "80px"}, "")
    curves: dict[str, dict[str, tuple[list, list]]] = {}
    problems = []
    for choice in runs:
        try:
            reader = src.reader(*split_choice(choice))
            rows = {"loss": tuple(reader.loss())}
            for name in reader.scalar_names():
                if name != "loss":
                    rows[name] = tuple(reader.series(name))
            if key:
                rows[f"{key} · {stat}"] = tuple(getattr(reader, f"{kind}_series")(key, stat))
            curves[choice] = rows
        except READ_ERRORS as exc:
            problems.append(f"{choice}: {exc}")
    fig = overlay_figure(curves, key_row=f"{key} · {stat}" if key else None)
    n_rows = len(fig["layout"].get("meta", {}).get("rows", [])) or 1
    info = f"{len(curves)} run(s) on one step axis" + (f" · cannot read {'; '.join(problems)}"
                                                       if problems else "")
    return fig, {"height": f"{ROW_PX * n_rows + EXTRA_PX}px"}, info


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def overlay_figure(curves: dict[str, dict[str, tuple[list, list]]], key_row: str | None = None) -> dict:
    """Stacked panels sharing one step axis: the loss, up to :data:`MAX_METRICS` metrics, and
    the chosen statistic; one colour per run throughout (pure)."""
    names: list[str] = ["loss"]
    for rows in curves.values():
        for name, (_steps, values) in rows.items():
            if name not in names and name != key_row and _finite(values):
                names.append(name)
    names = names[:1 + MAX_METRICS] + ([key_row] if key_row else [])
    names = [n for n in names if any(_finite(rows.get(n, ([], []))[1]) for rows in curves.values())]
    if not names:
        return figures.empty_figure("nothing logged in these runs yet")
    n = len(names)
    gap = 0.05
    height = (1 - gap * (n - 1)) / n
    layout = figures.base_layout("", showlegend=True, hovermode="x unified", meta={"rows": names})
    data = []
    for i, name in enumerate(names):
        axis = "" if i == 0 else str(i + 1)
        top = 1 - i * (height + gap)
        every = [v for rows in curves.values() for v in _finite(rows.get(name, ([], []))[1])]
        log = bool(every) and min(every) > 0 and (figures.is_learning_rate(name) or name == key_row
                                                  or max(every) / min(every) > 1e3)
        yaxis = {"domain": [max(0.0, top - height), top], "gridcolor": "#eeeeee", "zeroline": False,
                 "title": {"text": figures.plot_text(name, AXIS_MOST) + (" (log)" if log else ""),
                           "font": {"size": 11}}}
        if log:
            yaxis.update(figures.log_axis(min(every), max(every)))
        layout[f"yaxis{axis}"] = yaxis
        for k, (run, rows) in enumerate(curves.items()):
            steps, values = rows.get(name, ([], []))
            if not steps:
                continue
            color = figures.LINE_COLORS[k % len(figures.LINE_COLORS)]
            data.append(figures._line(steps, values, run, color, yaxis=f"y{axis}", legendgroup=run,
                                      showlegend=i == 0,
                                      hovertemplate=f"{figures.plot_text(run)} %{{y:.4g}}<extra></extra>"))
    layout["xaxis"].update(title={"text": "step"}, anchor=f"y{n if n > 1 else ''}")
    return {"data": data, "layout": layout}
