"""Callbacks as plain functions of (data source, inputs) -> outputs; ``app.register`` wires them.

Each function is what Dash calls (minus the data source), so tests call them
directly. Live refreshes never resend the graph's elements or layout unless the
graph version or the folding changed: they return ``no_update`` or a ``Patch``.
"""
from __future__ import annotations

import time
from urllib.parse import parse_qs, quote

from dash import Patch, get_relative_path, no_update

from graphviz_autograd.diagnosis.recorded import run_findings
from graphviz_autograd.errors import GraphvizAutogradError
from graphviz_autograd.export.labels import plural

from . import figures
from . import ids
from . import panels
from .data import DataSource, parse_key
from .fold import (GROUP_PREFIX, MODULE_PREFIX, describe_folded, modules_at_depth, node_module,
                   parent_path, prefixes)
from .graph_view import (ELEMENTS_ROUTE, METRICS, color_payload, elements_ref, node_values,
                         search_nodes, stylesheet)
from .layout import deferred
from .names import from_keys, name_option
from .runs import newest_run

READ_ERRORS = (GraphvizAutogradError, KeyError, OSError, ValueError)
UNFOLD_FOLDS_CHILDREN_OVER = 60     # unfolding a module this big folds its child modules


def url_params(search: str | None) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs((search or "").lstrip("?")).items()}


def _opts(values) -> list[dict]:
    return [{"label": str(v), "value": v} for v in values]


# -- runs, ranks, refresh ------------------------------------------------------------
def run_options(src: DataSource, search, _n, current, current_options):
    names = src.run_names()
    options = _opts(names)
    options_out = no_update if options == current_options else options
    if current in names:
        return options_out, no_update
    params = url_params(search)
    compared = [c.rpartition("@")[0] if c.rpartition("@")[2].isdigit() else c
                for c in params.get("runs", "").split(",") if c]
    wanted = params.get("run") or next((c for c in compared if c in names), None)
    value = wanted if wanted in names else newest_run(src.root, names)
    if value:       # lay its graph out now: the browser asks for it three callbacks later
        mode = params.get("fold", "auto")
        src.prewarm(value, None, {"mode": mode if mode in ("auto", "none", "all") else "auto"})
    return options_out, (no_update if value == current else value)


def rank_options(src: DataSource, run, _n, current, current_options):
    ranks = []
    if run:
        try:
            ranks = src.run(run).ranks
        except READ_ERRORS:
            ranks = []
    options = _opts(ranks)
    value = current if current in ranks else (ranks[0] if ranks else None)
    return (no_update if options == current_options else options), (no_update if value == current else value)


def refresh(src: DataSource, run, rank, _n, previous):
    """The LATEST store: what the run holds now. Unchanged data -> no_update (nothing downstream runs)."""
    if not run:
        status = "no run selected" if src.run_names() else f"no runs under {src.root} yet"
        return (no_update if previous is None else None), status
    try:
        summary = src.summary(run, rank)
    except READ_ERRORS as exc:
        return (no_update if previous is None else None), f"cannot read run {run!r}: {exc}"
    src.prewarm(run, rank, {"mode": "auto"})      # a run picked in the dropdown: lay it out now
    if summary == previous:
        return no_update, no_update
    n_versions, n_ranks = len(summary["versions"]), len(summary["ranks"])
    status = (f"{summary['model'] or 'run'} · steps {summary['first']}–{summary['latest']}"
              f" ({summary['n_steps']} logged) · {plural(n_versions, 'graph version')}"
              f" · {plural(n_ranks, 'rank')}")
    return summary, status


def mount(_painted, _tick, mounted):
    """Fill the figure slots once: after the graph's first paint, or by the fallback timer."""
    slots = deferred()
    if mounted:
        return (*[no_update] * len(slots), no_update)
    return (*slots.values(), True)


def live_toggle(value):
    return "live" not in (value or [])


def slider_props(latest):
    if not latest or latest.get("latest") is None:
        return 0, 1, None
    lo, hi = latest["first"], latest["latest"]
    return lo, max(hi, lo + 1) if hi == lo else hi, {t: str(t) for t in nice_ticks(lo, hi)}


def nice_ticks(lo: int, hi: int, most: int = 6) -> list[int]:
    """Round step numbers for the slider: multiples of 1, 2 or 5 x 10^k, plus both ends."""
    if hi <= lo:
        return [lo]
    span = hi - lo
    for k in range(0, 12):
        for m in (1, 2, 5):
            gap = m * 10 ** k
            if span / gap <= most - 1:
                first = -(-lo // gap) * gap
                inner = [t for t in range(first, hi + 1, gap) if lo < t < hi and
                         min(t - lo, hi - t) >= gap / 3]
                return [lo, *inner, hi]
    return [lo, hi]


# -- step selection --------------------------------------------------------------------
def _clamp(step, latest) -> int | None:
    if step is None or not latest or latest.get("latest") is None:
        return None
    return int(min(max(round(step), latest["first"]), latest["latest"]))


def _from_selection(selected) -> float | None:
    points = [p for p in (selected or {}).get("points", []) if p.get("y") is not None]
    if points:       # the worst (highest) point of the box: dragging around a spike picks it
        return max(points, key=lambda p: p["y"])["x"]
    box = (selected or {}).get("range", {}).get("x")
    return (box[0] + box[1]) / 2 if box else None


def pick_step(trigger, loss_click, loss_selected, metrics_click, metrics_selected):
    """PICKED store from a click or a box selection on the loss or metric curves."""
    click, selected = (loss_click, loss_selected) if trigger == ids.LOSS else (metrics_click, metrics_selected)
    step = None
    if click and click.get("points"):
        step = click["points"][0].get("x")
    elif selected:
        step = _from_selection(selected)
    if step is None:
        return no_update
    return {"step": step, "at": time.time()}


def select_step(trigger, slider, picked, latest, state, search):
    """STEP store and slider value. ``trigger``: id of the input that fired."""
    state = state or {"step": None, "follow": True}
    if not latest or latest.get("latest") is None:
        empty = {"step": None, "follow": True}
        return (no_update if state == empty else empty), no_update
    last = latest["latest"]
    step, follow = state.get("step"), state.get("follow", True)
    if trigger == ids.STEP_SLIDER:
        step = slider
    elif trigger == ids.PICKED and picked:
        step = picked.get("step", step)
    elif step is None:
        wanted = url_params(search).get("step")
        step = int(wanted) if wanted and wanted.lstrip("-").isdigit() else last
    elif follow or state.get("run") != latest.get("run"):
        step = last
    if trigger in (ids.STEP_SLIDER, ids.PICKED):
        follow = _clamp(step, latest) == last
    step = _clamp(step, latest)
    new = {"step": step, "follow": bool(follow), "run": latest.get("run")}
    return (no_update if new == state else new), (no_update if step == slider else step)


def step_label(src: DataSource, state, latest) -> str:
    """What the selected step is, and which recorded step the statistics shown come from (the
    recorder keeps them every ``every`` steps; colours, flow and details use the same one)."""
    step = (state or {}).get("step")
    if step is None or not latest:
        return "step –"
    label = f"step {step}" + (" (the latest)" if step == latest.get("latest") else "")
    try:
        at = src.stats_step(latest["run"], latest["rank"], step)
    except READ_ERRORS:
        at = None
    if at is not None and at != step:
        label += f" · statistics of step {at}"
    return label


def step_patch(state) -> Patch:
    """Move a figure's selected-step marker without resending its data."""
    p = Patch()
    p["layout"]["shapes"] = figures.step_shape((state or {}).get("step"))
    return p


def only_step(triggered) -> bool:
    """True when the selected step is all that changed (a Patch of the marker is enough)."""
    return bool(triggered) and set(triggered) <= {ids.STEP}


# -- curves ----------------------------------------------------------------------------
def loss_figure(src: DataSource, triggered, latest, state):
    if only_step(triggered):
        return step_patch(state)
    if not latest:
        return figures.empty_figure("no run selected")
    try:
        reader = src.reader(latest["run"], latest["rank"])
        s = reader.loss()
        name = "loss"
        if not s.steps and latest["scalars"]:
            name = latest["scalars"][0]
            s = reader.series(name)
    except READ_ERRORS as exc:
        return figures.empty_figure(f"cannot read the loss: {exc}")
    return figures.loss_figure(s.steps, s.values, (state or {}).get("step"), latest["run"], name)


def scalar_options(latest, current):
    names = [n for n in (latest or {}).get("scalars", []) if n != "loss"]
    options = [name_option(n) for n in names]
    keys = [o["value"] for o in options]
    value = [v for v in (current or []) if v in keys] if current is not None else keys[:3]
    return options, value


def metrics_figure(src: DataSource, triggered, latest, chosen, state):
    if only_step(triggered):
        return step_patch(state)
    if not latest:
        return figures.empty_figure("no run selected")
    try:
        reader = src.reader(latest["run"], latest["rank"])
        series = {n: tuple(reader.series(n)) for n in from_keys(chosen, latest["scalars"])}
    except READ_ERRORS as exc:
        return figures.empty_figure(f"cannot read scalars: {exc}")
    return figures.metrics_figure(series, (state or {}).get("step"), latest["run"])


# -- the graph -------------------------------------------------------------------------
def graph_update(src: DataSource, latest, state, fold_state, metric, key):
    """Elements and stylesheet (only when the graph version or folding changed), plus the
    colour payload and legend of the selected step (every time)."""
    if not latest:
        return None, no_update, None, "no run selected", None, panels.legend(None)
    run, rank = latest["run"], latest["rank"]
    try:
        version = src.version_at(run, rank, (state or {}).get("step"))
        if version is None:
            return None, no_update, None, "no graph recorded yet", None, panels.legend(None)
        step_readings(src, run, rank, state, metric)   # while the layout may still be running
        new_key, scene = src.scene(run, rank, version, fold_state)
    except READ_ERRORS as exc:
        return None, no_update, None, f"cannot read the graph: {exc}", None, panels.legend(None)
    colors, legend = graph_colors(src, new_key, scene, state, metric, latest)
    if new_key == key:
        return no_update, no_update, no_update, no_update, colors, legend
    info = graph_info(scene, version)
    # Positions travel with the elements; the browser fits the view to the bbox when the graph
    # (not only its folding) changed (see assets/dashboard.js).
    elements = elements_ref(new_key, ids.GRAPH, scene, elements_url(new_key))
    return elements, stylesheet(len(scene.graph)), new_key, info, colors, legend


def graph_info(scene, version: int, most: int = 6) -> str:
    """One line under the graph: its size, how much shows, and what is folded, by name."""
    n_src = len(scene.view.source) if scene.view.source is not None else len(scene.graph)
    info = f"graph version {version}: {plural(n_src, 'node')}"
    if scene.view.folded:
        names = describe_folded(scene.view.source or scene.graph, scene.view.folded)
        more = f", and {len(names) - most} more" if len(names) > most else ""
        info += (f", {len(scene.graph)} shown · folded: {', '.join(names[:most])}{more}"
                 " (select one, then “unfold”)")
    return info + f" · layout: {scene.engine}"


def elements_url(key: str) -> str:
    """URL of the elements of ``key`` (relative to where the app is mounted)."""
    path = f"{ELEMENTS_ROUTE}?key={quote(key, safe='')}"
    try:
        return get_relative_path(path)
    except Exception:  # noqa: BLE001 - outside a Dash app (tests)
        return path


def step_readings(src: DataSource, run, rank, state, metric) -> tuple:
    """``(step with statistics, node stats, parameter stats, findings)`` behind the colours of
    the selected step; every read is cached, so reading ahead of the layout costs nothing twice."""
    spec = METRICS[metric if metric in METRICS else "grad_norm"]
    at = None
    node_stats: dict = {}
    param_stats: dict = {}
    try:
        at = src.stats_step(run, rank, (state or {}).get("step"))
        if at is not None and spec.stats:
            node_stats = src.stats_at(run, rank, at, "node", spec.stats)
            param_stats = src.stats_at(run, rank, at, "param", spec.stats)
    except READ_ERRORS:
        pass
    return at, node_stats, param_stats, step_findings(src, run, rank, at)


def graph_colors(src: DataSource, key, scene, state, metric, latest):
    """The colour payload of the selected step (applied in the browser) and the legend."""
    metric = metric if metric in METRICS else "grad_norm"
    spec = METRICS[metric]
    at, node_stats, param_stats, findings = step_readings(src, latest["run"], latest["rank"], state,
                                                          metric)
    values = node_values(scene, metric, node_stats, param_stats)
    payload, info = color_payload(key, ids.GRAPH, values, metric, scene.order,
                                  stamp=f"{key}|{at}|{metric}")
    where = {node_id: i for i, node_id in enumerate(scene.order)}
    payload["m"] = sorted({where[n] for f in findings for n in f.nodes if n in where})
    return payload, [panels.legend(info, at if spec.stats else None), panels.findings_list(findings, at)]


def step_findings(src: DataSource, run, rank, step) -> list:
    """What looks wrong at ``step`` (diagnosis.recorded.run_findings), cached per step."""
    if step is None:
        return []
    try:
        return src.cached(("findings", run, rank, step),
                          lambda: run_findings(src.reader(run, rank), step))
    except READ_ERRORS:
        return []


def search(src: DataSource, query, _n_submit, key, previous):
    """Matches of the search box; pressing Enter again on the same query moves to the next match."""
    scene = src.scene_for_key(key)
    if not query or scene is None:
        return {"ids": [], "focus": None, "target": ids.GRAPH}, ""
    hits = search_nodes(scene.view, query)
    if not hits:
        return {"ids": [], "focus": None, "target": ids.GRAPH}, f"no node matches “{query}”"
    previous = previous or {}
    index = 0
    if previous.get("query") == query and previous.get("key") == key and previous.get("ids") == hits:
        index = (previous.get("index", 0) + 1) % len(hits)
    shown = (f"{index + 1} of {len(hits)} match{'es' if len(hits) != 1 else ''}"
             + (" (first 50)" if len(hits) >= 50 else "") + (" · Enter: next" if len(hits) > 1 else ""))
    return {"ids": hits, "focus": hits[index], "index": index, "target": ids.GRAPH,
            "query": query, "key": key}, shown


def select_node(trigger, tap, result, _run, current):
    if trigger == ids.RUN:
        return None if current is not None else no_update
    if trigger == ids.SEARCH_RESULT:
        focus = (result or {}).get("focus")
        return focus if focus else no_update
    node_id = (tap or {}).get("id")
    return node_id if node_id and node_id != current else no_update


def _fold_target(scene, node_id) -> tuple[str, str] | None:
    """``("unfold" | "fold", module path)`` for the selected node, or None."""
    if not node_id or scene is None:
        return None
    if node_id.startswith(GROUP_PREFIX):
        return "fold", node_id[len(GROUP_PREFIX):]
    if node_id in scene.view.members:
        return "unfold", node_id[len(MODULE_PREFIX):]
    if node_id in scene.graph:
        mod = node_module(scene.graph.node(node_id))
        return ("fold", mod) if mod else None
    return None


def fold_modules(src: DataSource, trigger, selected, key, fold_state, search):
    """The FOLDED store after a fold button, a run change or the page URL."""
    if trigger in (ids.RUN, ids.LOCATION, None):
        mode = url_params(search).get("fold", "auto")
        new = {"mode": mode if mode in ("auto", "none", "all") else "auto"}
        return no_update if new == fold_state else new
    if trigger == ids.FOLD_ALL:
        return {"mode": "all"}
    if trigger == ids.UNFOLD_ALL:
        return {"mode": "none"}
    scene = src.scene_for_key(key)
    target = _fold_target(scene, selected)
    if trigger != ids.FOLD_TOGGLE or target is None or scene.view.source is None:
        return no_update
    graph = scene.view.source
    current = set(src.folded(graph, parse_key(key)[3], fold_state))
    action, path = target
    if action == "unfold":
        current.discard(path)
        if len(scene.view.members.get(MODULE_PREFIX + path, ())) > UNFOLD_FOLDS_CHILDREN_OVER:
            depth = path.count(".") + 1
            current |= {p for p in modules_at_depth(graph, depth) if parent_path(p) == path}
    else:
        current = {p for p in current if path not in prefixes(p)} | {path}
    return {"mode": "paths", "paths": sorted(current)}
