"""The optimizer's update rule in a parameter node's details, worded like the ops' forward and
gradient rules (:mod:`dashboard.ops`): what ``optimizer.step()`` does to this parameter, with
the run's own settings (``run.meta["optimizer"]`` and ``["optimizer_settings"]``).

Example:
    >>> meta = {"optimizer": "SGD", "optimizer_settings": {"lr": 0.1, "momentum": 0.9}}
    >>> [c.children for c in update_rule_panel(meta, "fc1.weight")][0]
    'how optimizer.step() updates it (SGD with momentum, from the run)'
"""
from __future__ import annotations

from dash import html

from graphviz_autograd.diagnosis.update_rules import rule_from_meta


def update_rule_panel(meta: dict | None, param: str) -> list:
    """Heading and rule lines for parameter ``param``; [] when the run names no optimizer."""
    rule = rule_from_meta(meta or {}, param) if param else None
    if rule is None:
        return []
    title, lines = rule
    name = title.split(":", 1)[0]
    known = isinstance((meta or {}).get("optimizer_settings"), dict)
    where = "from the run" if known else "settings not stored"
    return [html.H4(f"how optimizer.step() updates it ({name}, {where})"),
            html.Div(className="gva-rule gva-update-rule",
                     children=[html.Div(line, className="gva-rule-line") for line in lines])]
