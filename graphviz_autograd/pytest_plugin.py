"""pytest plugin of graphviz-autograd (registered through the ``pytest11`` entry point).

Options (group "graphviz-autograd"):

* ``--gva-artifacts DIR``: when a ``graphviz_autograd.testing`` assertion fails,
  write the offending subgraph (SVG) and the full graph (JSON) to DIR and name
  the files in the failure message.
* ``--gva-update-golden``: ``assert_graph_matches`` writes golden files instead
  of comparing (same as ``GVA_UPDATE_GOLDEN=1``).

Fixtures: ``gva_artifacts`` (the artifacts directory for this test) and
``gradient_tracker`` (a factory: ``tracker = gradient_tracker(model)`` records
every gradient the model's parameters get during the test).

This module is imported in every pytest run of anyone who installed the
package, so it imports no torch at load time; the options go to
``graphviz_autograd.testing.settings`` (stdlib only), where the assertions read them.

Example (a test file):
    def test_all_layers_learn(gradient_tracker):
        net = make_net()
        tracker = gradient_tracker(net)
        net(x).sum().backward()
        tracker.assert_all_received()
"""
from __future__ import annotations

from pathlib import Path

import pytest

from graphviz_autograd.testing import settings as _settings

_SAVED: list[dict] = []     # the options of enclosing sessions (pytester runs nest them)


def pytest_addoption(parser) -> None:
    group = parser.getgroup("graphviz-autograd", "graphviz-autograd gradient checks")
    group.addoption("--gva-artifacts", metavar="DIR", default=None,
                    help="write the graph (SVG subgraph + JSON) of each failing gradient "
                         "assertion to DIR and name the files in the failure message")
    group.addoption("--gva-update-golden", action="store_true", default=False,
                    help="assert_graph_matches writes golden graph files instead of "
                         "comparing (also: GVA_UPDATE_GOLDEN=1)")


def pytest_configure(config) -> None:
    _SAVED.append(dict(_settings.SETTINGS))
    artifacts = config.getoption("gva_artifacts", None)
    if artifacts:
        artifacts = str(Path(artifacts).expanduser().resolve())
    _settings.SETTINGS.clear()
    _settings.SETTINGS.update(artifacts=artifacts,
                              update_golden=bool(config.getoption("gva_update_golden", False)))


def pytest_unconfigure(config) -> None:
    _settings.SETTINGS.clear()
    _settings.SETTINGS.update(_SAVED.pop() if _SAVED else {})


def pytest_report_header(config) -> list[str]:
    current = _settings.settings()
    parts = []
    if current.get("artifacts"):
        parts.append(f"artifacts -> {current['artifacts']}")
    if current.get("update_golden"):
        parts.append("updating golden graphs")
    return [f"graphviz-autograd: {', '.join(parts)}"] if parts else []


@pytest.fixture
def gva_artifacts(tmp_path) -> Path:
    """The ``--gva-artifacts`` directory, or a fresh per-test directory without it."""
    configured = _settings.settings().get("artifacts")
    path = Path(configured) if configured else tmp_path / "gva-artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def gradient_tracker():
    """Factory: ``gradient_tracker(model)`` -> a started ``GradientTracker``.

    Every tracker made in the test has its hooks removed at teardown.
    """
    from graphviz_autograd.testing import GradientTracker

    trackers = []

    def make(model):
        tracker = GradientTracker(model).start()
        trackers.append(tracker)
        return tracker

    try:
        yield make
    finally:
        for tracker in trackers:
            tracker.close()
