"""Callbacks of the node detail panel: what the node is, and its statistics over the run.

A folded module has no statistics of its own in the store (only activations, when the
recorder kept them): its gradient curves combine those of the nodes it stands for
(max of norms and |max|, mean of zero fractions, sum of NaN/Inf counts).
"""
from __future__ import annotations

from graphviz_autograd.graph.model import NodeKind

from . import figures
from . import panels
from .callbacks import READ_ERRORS, _fold_target, only_step, step_patch
from .data import DataSource, parse_key
from .fold import GROUP_PREFIX
from .rules import update_rule_panel

MAX_MEMBER_SERIES = 40          # a folded module's curves combine at most this many members
AT_STEP_GRAD = ("grad_norm", "grad_absmax", "grad_mean", "grad_std", "grad_zero_frac",
                "grad_nan", "grad_inf")
AT_STEP_ACT = ("act_mean", "act_std", "act_zero_frac", "act_sat_frac")
_COMBINE = {"grad_norm": max, "grad_absmax": max, "grad_nan": sum, "grad_inf": sum,
            "grad_zero_frac": lambda v: sum(v) / len(v), "act_zero_frac": lambda v: sum(v) / len(v)}


def _node_and_graph(scene, node_id):
    if scene is None or not node_id:
        return None, None
    if node_id in scene.graph:
        return scene.graph.node(node_id), scene.graph
    if scene.view.source is not None and node_id in scene.view.source:
        return scene.view.source.node(node_id), scene.view.source
    return None, None


def _is_folded(node) -> bool:
    return node.kind is NodeKind.MODULE


def _series_spec(node) -> tuple[str, str, tuple[str, ...]]:
    """(store kind, key, stats to plot) for a node."""
    if node.kind is NodeKind.PARAM:
        return "param", node.param, ("grad_norm", "grad_absmax", "update_ratio")
    if _is_folded(node):
        return "module", node.module, ("grad_norm", "grad_absmax", "act_zero_frac")
    return "node", node.id, ("grad_norm", "grad_absmax", "act_zero_frac")


def _member_keys(scene, node) -> list[tuple[str, str]]:
    """(store kind, key) of the members of a folded module, parameters and ops."""
    source = scene.view.source
    out = []
    for member in scene.view.members.get(node.id, ()):
        m = source.node(member)
        if m.kind is NodeKind.PARAM:
            out.append(("param", m.param))
        elif m.kind is NodeKind.OP:
            out.append(("node", m.id))
    return out


def _combine(stat: str, values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return _COMBINE.get(stat, max)(values) if values else None


def _member_series(reader, members, stat: str) -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = {}
    for kind, key in members[:MAX_MEMBER_SERIES]:
        series = getattr(reader, f"{kind}_series")(key, stat)
        for step, value in zip(series.steps, series.values):
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return steps, [_combine(stat, by_step[s]) for s in steps]


def node_detail(src: DataSource, node_id, key):
    """Detail panel and the fold button of the selected node."""
    scene = src.scene_for_key(key)
    target = _fold_target(scene, node_id)
    fold_label = f"{target[0]} {target[1]}" if target else "fold / unfold selected"
    if scene is not None and node_id and node_id.startswith(GROUP_PREFIX):
        inside = sum(1 for p in scene.view.parent.values() if p == node_id)
        return panels.group_panel(node_id, inside), fold_label, target is None
    node, graph = _node_and_graph(scene, node_id)
    if node is None:
        hint = "Click a node to see its op, shapes, saved tensors and gradient statistics."
        return [panels.html.P(hint, className="gva-hint")], fold_label, True
    members = len(scene.view.members.get(node.id, ()))
    children = panels.detail_panel(node, graph, members)
    if node.kind is NodeKind.PARAM:             # what optimizer.step() does to it
        children += update_rule_panel(_run_meta(src, key), node.param or "")
    return children, fold_label, target is None


def _run_meta(src: DataSource, key) -> dict:
    parsed = parse_key(key)
    try:
        return src.run(parsed[0]).meta if parsed else {}
    except READ_ERRORS:
        return {}


def node_figure(src: DataSource, triggered, node_id, key, latest, state):
    """The selected node's statistics over every recorded step, the selected step marked."""
    if only_step(triggered):
        return step_patch(state)
    scene = src.scene_for_key(key)
    node, _graph = _node_and_graph(scene, node_id)
    if node_id and node_id.startswith(GROUP_PREFIX):
        return figures.empty_figure("an open module: select a node in it")
    if node is None or not latest:
        return figures.empty_figure("no node selected")
    kind, name, stats = _series_spec(node)
    try:
        reader = src.reader(latest["run"], latest["rank"])
        if kind == "module":
            members = _member_keys(scene, node)
            series = {f"{s} ({'max' if _COMBINE.get(s, max) is max else 'mean'} of members)":
                      _member_series(reader, members, s) for s in stats[:2]}
            series["act_zero_frac"] = tuple(reader.module_series(name, "act_zero_frac"))
        else:
            series = {s: tuple(getattr(reader, f"{kind}_series")(name, s)) for s in stats}
    except READ_ERRORS as exc:
        return figures.empty_figure(f"cannot read statistics: {exc}")
    return figures.node_figure(series, (state or {}).get("step"), f"{name} over steps", key or "")


def node_at_step(src: DataSource, node_id, state, key, latest):
    """The selected node's statistics at the selected step (a table)."""
    scene = src.scene_for_key(key)
    node, _graph = _node_and_graph(scene, node_id)
    step = (state or {}).get("step")
    if node is None or not latest or step is None:
        return []
    kind, name, _stats = _series_spec(node)
    run, rank = latest["run"], latest["rank"]
    try:
        at = src.stats_step(run, rank, step)
        if at is None:
            return []
        if kind == "module":
            members = _member_keys(scene, node)
            tables = {k: src.stats_at(run, rank, at, k, AT_STEP_GRAD) for k in ("node", "param")}
            values = {s: _combine(s, [tables[k][s].get(key_) for k, key_ in members])
                      for s in AT_STEP_GRAD}
            values.update(src.key_stats_at(run, rank, at, "module", name, AT_STEP_ACT))
        else:
            extra = ("param_norm", "update_ratio") if kind == "param" else \
                ("act_mean", "act_zero_frac", "act_sat_frac")
            values = src.key_stats_at(run, rank, at, kind, name, AT_STEP_GRAD + extra)
    except READ_ERRORS:
        return []
    return panels.at_step_table(values, step, at)

