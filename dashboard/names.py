"""Names from a run (metrics, parameters, modules) bounded before they reach the page: a 1 MB
metric name must not hang the browser. The full name stays the value; what is shown is cut in
the middle with an ellipsis, and the hover title carries the full name (up to TITLE_MOST).

Example:
    >>> short_name("metric_" + "x" * 200 + "_end", 30)
    'metric_xxxxxxxxxxxxxxxx…xx_end'
    >>> len(short_name("a" * 10**6))
    80
"""
from __future__ import annotations

import hashlib

SHOWN_MOST = 80           # characters of a name shown in a label, a legend or a hover
AXIS_MOST = 36            # characters of a name shown as an axis title (a 260 px panel)
TITLE_MOST = 10_000       # characters of the hover title; past this it says how long the name is


def short_name(name: object, most: int = SHOWN_MOST) -> str:
    """``name`` as text of at most ``most`` characters: its start and end around an ellipsis."""
    s = str(name)
    if len(s) <= most:
        return s
    tail = max(1, most // 5)
    return s[:most - tail - 1] + "…" + s[-tail:]


def title_text(name: object, most: int = TITLE_MOST) -> str:
    """The hover title of a name: the full name, or its first ``most`` characters and its length."""
    s = str(name)
    return s if len(s) <= most else f"{s[:most]}… ({len(s):,} characters in all)"


def name_key(name: str) -> str:
    """What stands for ``name`` in the browser (a dropdown value): the name itself when short,
    else its short form and a digest (a dropdown holding a 10 KB value freezes the tab)."""
    if len(name) <= SHOWN_MOST:
        return name
    return f"{short_name(name, 40)}#{hashlib.sha1(name.encode('utf-8', 'replace')).hexdigest()[:12]}"


def from_keys(keys: object, names: list[str]) -> list[str]:
    """The names of ``names`` that dropdown values ``keys`` stand for (unknown keys dropped)."""
    by_key = {name_key(n): n for n in names}
    return [by_key[k] for k in (keys if isinstance(keys, list) else []) if isinstance(k, str) and k in by_key]


def name_option(name: str) -> dict:
    """A dropdown option for ``name``: short label, full name on hover, :func:`name_key` as value."""
    if len(name) <= SHOWN_MOST:
        return {"label": name, "value": name}
    from dash import html

    return {"label": html.Span(short_name(name), title=title_text(name), className="gva-name"),
            "value": name_key(name), "search": short_name(name, 200)}
