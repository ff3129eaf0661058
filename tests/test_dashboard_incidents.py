"""Incidents, the spread card and the update rule as the dashboard builds them (pure functions
and callbacks called directly); in the browser: tests/test_browser_incidents.py."""
from __future__ import annotations

import doctest
import json
import math
import time

import pytest

from graphviz_autograd.dashboard import ids, incidents, rules, spread_view
from graphviz_autograd.dashboard.data import DataSource
from graphviz_autograd.dashboard.figures import loss_figure
from graphviz_autograd.store import RunWriter
from graphviz_autograd.store.schema import Incident

NAN = Incident(37, "nonfinite", "loss = nan at step 37; the first non-finite value comes from `sqrt` "
               "<at> mk.py:11 " + "x" * 300, {"loss": math.nan}, ("SqrtBackward0:0", "gone:0"), (38, 39))
SPIKE = Incident(23, "spike", "loss 56.6 at step 23 is a spike", {"loss": 56.6})


@pytest.mark.parametrize("module", [incidents, rules, spread_view])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


def test_markers_sit_on_the_curve_or_at_the_top_when_the_loss_is_not_finite():
    rows = incidents.incident_rows([NAN, SPIKE])
    assert [r["step"] for r in rows] == [23, 37]                 # step order
    fig = loss_figure(list(range(40)), [1.0] * 23 + [56.6] + [1.0] * 13 + [math.nan] * 3, 37, "r")
    marked = incidents.with_markers(fig, rows)
    assert fig["data"] == marked["data"][:1]                     # the curve untouched
    marks = marked["data"][1]
    assert marks["x"] == [23, 37] and marks["y"] == [56.6, 56.6] and marks["customdata"] == [0, 1]
    assert marks["text"] == ["", "NaN/Inf"]
    hover = marks["hovertext"][1]
    assert "&lt;at&gt;" in hover and "<at>" not in hover           # run text is shown, not parsed
    assert all(len(line) < 100 for line in hover.split("<br>"))  # wrapped for the hover box
    json.dumps(marked, allow_nan=False)
    assert incidents.with_markers(fig, []) is fig


def test_the_list_is_bounded_and_the_outline_keeps_only_drawn_nodes():
    rows = incidents.incident_rows([NAN] * 60)
    children = incidents.incident_list(rows, chosen=2)
    buttons = children[1].children
    assert len(buttons) == incidents.MAX_ROWS and "10 more" in children[2].children
    assert buttons[0].id == ids.incident_row(0) and "gva-incident-on" in buttons[2].className
    summary = buttons[0].children[2].children
    assert len(summary) == incidents.SUMMARY_CHARS and summary.endswith("…")
    assert buttons[0].title == NAN.summary
    assert incidents.incident_list([]) == []
    shown = {"SqrtBackward0:0", "module:fc1"}
    assert incidents.highlight_ids(["SqrtBackward0:0", "gone:0"], shown, {}) == ["SqrtBackward0:0"]
    assert incidents.highlight_ids(["fc1/AddmmBackward0:0", "fc1/TBackward0:0"], shown,
                                   {"fc1/AddmmBackward0:0": "module:fc1",
                                    "fc1/TBackward0:0": "module:fc1"}) == ["module:fc1"]


def test_choosing_a_row_or_a_marker(tmp_path):
    with RunWriter(tmp_path / "nan", meta={"model": "m"}) as w:      # a real store, real SQLite
        for step in range(40):
            w.add_step(step, wall_time=time.time(), graph_version=None, scalars={"loss": 1.0})
        for i, inc in enumerate((SPIKE, NAN)):
            w.add_incident(i, inc.step, inc.kind, inc.summary,
                           {"values": {}, "nodes": list(inc.nodes), "detail_steps": list(inc.detail_steps)})
    src = DataSource(tmp_path)
    latest = src.summary("nan", None)
    panel, cls = incidents.panel(src, latest, None)
    assert cls == "gva-incidents" and len(panel[1].children) == 2
    chosen, picked = incidents.choose_row(src, ids.incident_row(1), [0, 1], latest)
    assert chosen == {"index": 1, "run": "nan", "step": 37, "nodes": list(NAN.nodes)}
    assert picked["step"] == 37
    assert incidents.choose_row(src, ids.incident_row(1), [0, 0], latest)[0] is incidents.no_update
    assert incidents.choose_marker(src, {"points": [{"x": 23, "customdata": 0}]}, latest)["step"] == 23
    assert incidents.choose_marker(src, {"points": [{"x": 37, "y": 1.0}]}, latest)["index"] == 1
    assert incidents.choose_marker(src, {"points": [{"x": 5, "y": 1.0}]}, latest) is incidents.no_update
    marked = incidents.loss_figure(src, set(), latest, {"step": 37})
    assert [t["name"] for t in marked["data"]] == ["loss", "incidents"]
    src.close()


def test_update_rules_of_parameter_nodes():
    meta = {"optimizer": "SGD", "optimizer_settings": {"lr": 0.01, "momentum": 0.9}}
    head, body = rules.update_rule_panel(meta, "fc1.weight")
    lines = [c.children for c in body.children]
    assert "SGD with momentum" in head.children and "from the run" in head.children
    assert "b ← 0.9 · b + g" in lines[1] and lines[2] == "fc1.weight ← fc1.weight − 0.01 · b"
    head, body = rules.update_rule_panel({"optimizer": "Adam"}, "w")
    assert "settings not stored" in head.children and any("√v̂" in c.children for c in body.children)
    assert rules.update_rule_panel({"optimizer": None}, "w") == []
    assert rules.update_rule_panel({}, "w") == []


def test_the_widest_spread_is_relative_to_the_mean_and_skips_gaps():
    spreads = {"big": ([0, 1], [100.0, 100.0], [101.0, 101.0], [102.0, 102.0]),
               "wide": ([0, 1], [0.1, None], [1.0, math.nan], [3.0, 9.0])}
    assert spread_view.widest(spreads) == "wide"
    assert spread_view.widest({"only": ([0], [None], [None], [None])}) == "only"
    assert spread_view.widest({}) is None
