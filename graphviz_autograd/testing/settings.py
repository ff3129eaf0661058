"""Options the pytest plugin set for this session (``{}`` outside pytest).

The plugin writes them (``pytest_configure``); the assertions read them. Stdlib only:
the plugin loads in every pytest run of anyone who installed the package.
"""
from __future__ import annotations

SETTINGS: dict = {}


def settings() -> dict:
    """A copy of the current options: ``artifacts`` (a directory or None), ``update_golden``."""
    return dict(SETTINGS)
