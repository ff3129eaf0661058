"""Notes about the runs root itself: entries that could not be read (shown, never hidden).

Example:
    >>> skipped_text([("loop", "too many levels of symbolic links")])
    'skipped 1 unreadable entry in the runs folder: loop (too many levels of symbolic links)'
"""
from __future__ import annotations

from dash import html

from .data import DataSource
from .runs import scan_runs

MOST_NAMED = 5


def skipped_text(skipped: list[tuple[str, str]], most: int = MOST_NAMED) -> str:
    """One line naming the entries left out of the run list and why."""
    named = ", ".join(f"{name} ({why})" for name, why in skipped[:most])
    more = f", and {len(skipped) - most} more" if len(skipped) > most else ""
    n = len(skipped)
    return (f"skipped {n} unreadable {'entry' if n == 1 else 'entries'} in the runs folder: "
            f"{named}{more}")


def skipped_note(src: DataSource, _search, _n):
    """The SKIPPED line under the header: empty when every entry of the root could be read."""
    skipped = scan_runs(src.root)[1]
    if not skipped:
        return None
    text = skipped_text(skipped)
    title = "\n".join(f"{name}: {why}" for name, why in skipped)
    return html.Div(text, title=title, className="gva-skipped")
