"""Incidents in the dashboard: the steps where training broke, marked on the loss curve and
listed under it; choosing one selects its step and outlines its nodes in the graph.

``run.incidents()`` (the store) gives the incidents; here they become plain dicts
(:func:`incident_rows`), a marker trace on the loss figure (:func:`with_markers`), a short
list (:func:`incident_list`), and the ids to outline (:func:`highlight_ids`). The callbacks
at the end are thin: read, call the pure functions, return.

Example:
    >>> rows = incident_rows([Incident(37, "nonfinite", "loss = nan at step 37", {}, ("a",))])
    >>> fig = with_markers({"data": [{"x": [36, 37], "y": [1.0, None]}], "layout": {}}, rows)
    >>> fig["data"][1]["x"], fig["data"][1]["customdata"]
    ([37], [0])
"""
from __future__ import annotations

import math
import textwrap
import time

from dash import html, no_update

from graphviz_autograd.store.schema import Incident  # noqa: F401 - the example above uses it

from . import callbacks
from . import ids
from .callbacks import READ_ERRORS
from .data import DataSource
from .figures import plot_text

MAX_ROWS = 50                   # the list shows the first 50 (a diverged run can hold many)
SUMMARY_CHARS = 160             # a row's summary is cut here (the whole of it in the tooltip)
MARKER = "#d62728"
KIND_LABEL = {"nonfinite": "NaN/Inf", "spike": "loss spike", "explosion": "gradient explosion"}


def _as_dict(incident) -> dict:
    return incident if isinstance(incident, dict) else dict(incident._asdict())


def incident_rows(incidents) -> list[dict]:
    """Incidents (the store's or plain dicts) as JSON-safe dicts: ``step``, ``kind``,
    ``summary``, ``nodes``, ``detail_steps``; in step order."""
    rows = []
    for inc in incidents:
        d = _as_dict(inc)
        rows.append({"step": int(d["step"]), "kind": str(d["kind"]), "summary": str(d["summary"]),
                     "nodes": [str(n) for n in d.get("nodes") or ()],
                     "detail_steps": [int(s) for s in d.get("detail_steps") or ()]})
    return sorted(rows, key=lambda r: r["step"])


def _hover(row: dict, width: int = 70) -> str:
    """The summary wrapped for plotly's hover box (which never wraps by itself)."""
    head = f"step {row['step']} · {KIND_LABEL.get(row['kind'], row['kind'])}"
    lines = textwrap.wrap(row["summary"], width) or [""]
    return "<br>".join([f"<b>{plot_text(head)}</b>", *(plot_text(l) for l in lines[:8])])


def with_markers(fig: dict, rows: list[dict]) -> dict:
    """``fig`` (a loss figure) with one red marker per incident at its step.

    The marker sits on the curve where the loss there is finite, else at the top of the
    plot with the value it had (a NaN loss leaves a gap in the line). Its ``customdata`` is
    the incident's index in ``rows`` (a click selects it); its hover, the summary.
    """
    if not rows or not fig.get("data"):
        return fig
    curve = fig["data"][0]
    by_step = dict(zip(curve.get("x") or [], curve.get("y") or []))
    finite = [v for v in by_step.values() if v is not None and math.isfinite(v)]
    top = max(finite) if finite else 1.0
    xs, ys, labels = [], [], []
    for row in rows:
        value = by_step.get(row["step"])
        on_curve = value is not None and math.isfinite(value)
        xs.append(row["step"])
        ys.append(value if on_curve else top)
        labels.append("" if on_curve else KIND_LABEL.get(row["kind"], row["kind"]))
    trace = {"type": "scatter", "mode": "markers+text", "name": "incidents", "x": xs, "y": ys,
             "customdata": list(range(len(rows))), "text": labels, "textposition": "top center",
             "textfont": {"color": MARKER, "size": 11}, "cliponaxis": False,
             "hovertext": [_hover(r) for r in rows], "hovertemplate": "%{hovertext}<extra></extra>",
             "marker": {"color": MARKER, "size": 13, "symbol": "diamond",
                        "line": {"color": "#ffffff", "width": 1.5}}}
    out = dict(fig)
    out["data"] = [*fig["data"], trace]
    return out


def _short(text: str, most: int = SUMMARY_CHARS) -> str:
    return text if len(text) <= most else text[:most - 1].rstrip() + "…"


def chosen_note(row: dict, outlined: list[str] | None) -> str:
    """What choosing ``row`` did to the graph, in words (the list's heading says it)."""
    head = f"step {row['step']} selected"
    if outlined:
        names = ", ".join(outlined[:4]) + (f" and {len(outlined) - 4} more" if len(outlined) > 4 else "")
        return f"{head}; outlined in red in the graph: {names}"
    if not row["nodes"]:
        return f"{head}; this incident names no node of the graph"
    return f"{head}; its nodes are not in the graph shown"


def incident_list(rows: list[dict], chosen: int | None = None,
                  outlined: list[str] | None = None) -> list:
    """The list under the loss curve: one button per incident (step, kind, summary); the
    heading says what the chosen one outlined."""
    if not rows:
        return []
    items = []
    for i, row in enumerate(rows[:MAX_ROWS]):
        cls = "gva-incident" + (" gva-incident-on" if i == chosen else "")
        items.append(html.Button(
            id=ids.incident_row(i), className=cls, title=row["summary"],
            n_clicks=0, children=[
                html.Span(f"step {row['step']}", className="gva-incident-step"),
                html.Span(KIND_LABEL.get(row["kind"], row["kind"]), className="gva-incident-kind"),
                html.Span(_short(row["summary"]), className="gva-incident-summary")]))
    more = len(rows) - len(items)
    head = (f"{len(rows)} incident{'s' if len(rows) != 1 else ''}: click one to go to its step "
            "and outline its nodes in the graph")
    if chosen is not None and 0 <= chosen < len(rows):
        head = f"{len(rows)} incident{'s' if len(rows) != 1 else ''} · {chosen_note(rows[chosen], outlined)}"
    children: list = [html.Div(head, className="gva-incidents-head"),
                      html.Div(items, className="gva-incident-rows")]
    if more > 0:
        children.append(html.Div(f"… {more} more (graphviz-autograd incidents RUN_DIR lists all)",
                                 className="gva-hint"))
    return children


def highlight_ids(nodes: list[str], shown: set[str], parent_of: dict[str, str]) -> list[str]:
    """Ids to outline for an incident's ``nodes``: each node drawn in the graph, or the folded
    module drawn in its place; nodes of another graph version are left out."""
    out = []
    for node in nodes:
        drawn = node if node in shown else parent_of.get(node)
        if drawn in shown and drawn not in out:
            out.append(drawn)
    return out


# -- callbacks (wired in app.register) --------------------------------------------------------
def read_rows(src: DataSource, latest) -> list[dict]:
    """The incidents of the run LATEST names (cached until the run grows)."""
    if not latest:
        return []
    run, rank = latest["run"], latest["rank"]
    try:
        return src.cached(("incidents", run, rank, latest.get("latest")),
                          lambda: incident_rows(src.reader(run, rank).incidents()))
    except READ_ERRORS:
        return []


def loss_figure(src: DataSource, triggered, latest, state):
    """:func:`dashboard.callbacks.loss_figure` with the run's incidents marked."""
    fig = callbacks.loss_figure(src, triggered, latest, state)
    return with_markers(fig, read_rows(src, latest)) if isinstance(fig, dict) else fig


def panel(src: DataSource, latest, chosen, outlined=None):
    """INCIDENTS children and class: hidden when the run has none."""
    rows = read_rows(src, latest)
    if not rows:
        return [], "gva-incidents gva-hidden"
    chosen = chosen or {}
    active = chosen.get("run") == latest.get("run") and (outlined or {}).get("step") == chosen.get("step")
    index = chosen.get("index") if active else None
    return incident_list(rows, index, (outlined or {}).get("ids")), "gva-incidents"


def choose_row(src: DataSource, trigger, clicks, latest):
    """INCIDENT store (and PICKED, so the step follows) from a click on a row of the list."""
    index = trigger.get("index") if isinstance(trigger, dict) and \
        trigger.get("type") == ids.incident_row(0)["type"] else None
    if not isinstance(index, int) or index >= len(clicks or []) or not clicks[index]:
        return no_update, no_update            # a row drawn anew, not clicked
    return _chosen(read_rows(src, latest), index, latest)


def choose_marker(src: DataSource, loss_click, latest):
    """INCIDENT store from a click on an incident's marker, or on the loss point under it (the
    step follows through :func:`dashboard.callbacks.pick_step`, as for any click on the curve)."""
    rows = read_rows(src, latest)
    points = (loss_click or {}).get("points") or []
    index = next((p["customdata"] for p in points if isinstance(p.get("customdata"), int)), None)
    if index is None and points:
        index = next((i for i, r in enumerate(rows) if r["step"] == points[0].get("x")), None)
    chosen, _picked = _chosen(rows, index, latest)
    return chosen


def _chosen(rows: list[dict], index, latest):
    if not isinstance(index, int) or not 0 <= index < len(rows) or not latest:
        return no_update, no_update
    row = rows[index]
    chosen = {"index": index, "run": latest["run"], "step": row["step"], "nodes": row["nodes"]}
    return chosen, {"step": row["step"], "at": time.time()}


def outline(src: DataSource, chosen, state, key, latest):
    """Ids the browser outlines: the chosen incident's nodes, while its step is selected."""
    empty = {"target": ids.GRAPH, "ids": [], "key": key}
    if not chosen or not latest or chosen.get("run") != latest.get("run"):
        return empty
    if (state or {}).get("step") != chosen.get("step"):
        return empty
    scene = src.scene_for_key(key)
    if scene is None:
        return empty
    shown = set(scene.order)
    parent_of = {m: module for module, members in scene.view.members.items() for m in members}
    return {"target": ids.GRAPH, "ids": highlight_ids(chosen.get("nodes") or [], shown, parent_of),
            "key": key, "step": chosen["step"]}
