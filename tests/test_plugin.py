"""The pytest plugin, run in-process through pytester (the entry point loads it)."""
from __future__ import annotations

import subprocess
import sys

import graphviz_autograd.pytest_plugin as plugin

# pytester's in-process runs drop modules first imported inside them from sys.modules,
# and torch (with its lazily imported parts) does not survive being imported twice:
# import what the inner runs use here, once.
import graphviz_autograd.diagnosis  # noqa: F401,E402
import graphviz_autograd.export.dot  # noqa: F401,E402
import graphviz_autograd.graph.serialize  # noqa: F401,E402
import graphviz_autograd.testing  # noqa: F401,E402
import graphviz_autograd.tracer  # noqa: F401,E402
import torch.fx.experimental.symbolic_shapes  # noqa: F401,E402

pytest_plugins = ["pytester"]

BROKEN = """
import torch, torch.nn as nn
from graphviz_autograd.testing import assert_gradients_flow

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 1)
    def forward(self, x):
        return self.b(self.a(x).detach())

def test_flow():
    net = Net()
    assert_gradients_flow(net, lambda: net(torch.ones(2, 3)).sum())
"""


def test_options_are_registered(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*graphviz-autograd*", "*--gva-artifacts=DIR*",
                                 "*--gva-update-golden*"])


def test_failing_assertion_writes_artifacts_and_names_them(pytester):
    pytester.makepyfile(test_broken=BROKEN)
    out = pytester.path / "gva-out"
    result = pytester.runpytest(f"--gva-artifacts={out}")
    result.assert_outcomes(failed=1)
    svg = out / "test_broken.py__test_flow-gradients_flow.svg"
    js = out / "test_broken.py__test_flow-gradients_flow.json"
    assert svg.exists() and js.exists(), sorted(p.name for p in out.iterdir())
    text = result.stdout.str()
    assert str(svg) in text and str(js) in text
    assert "`a.weight`, `a.bias` have no path to the loss" in text
    lines = (pytester.path / "test_broken.py").read_text().splitlines()
    detach = next(i for i, line in enumerate(lines, 1) if ".detach()" in line)
    assert f"`.detach()` at test_broken.py:{detach}" in text
    assert "graphviz-autograd: artifacts ->" in text         # report header


def test_without_the_option_nothing_is_written(pytester):
    pytester.makepyfile(test_broken=BROKEN)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    assert "graph files:" not in result.stdout.str()
    assert not list(pytester.path.rglob("*.svg"))


def test_update_golden_flag(pytester):
    pytester.makepyfile(test_golden="""
import torch, graphviz_autograd as ga
from graphviz_autograd.testing import assert_graph_matches

def test_golden():
    net = torch.nn.Linear(2, 1)
    assert_graph_matches(ga.trace(net(torch.ones(1, 2)).sum(), model=net), "golden/lin.json")
""")
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*golden/lin.json* does not exist*--gva-update-golden*"])
    pytester.runpytest("--gva-update-golden").assert_outcomes(passed=1)
    assert (pytester.path / "golden" / "lin.json").exists()
    pytester.runpytest().assert_outcomes(passed=1)


def test_fixtures(pytester):
    pytester.makepyfile(test_fixtures="""
import torch
NET = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))

def test_tracker(gradient_tracker):
    tracker = gradient_tracker(NET)
    NET(torch.ones(1, 2)).sum().backward()
    tracker.assert_all_received()
    assert NET[0].weight._backward_hooks

def test_hooks_were_removed():
    assert not NET[0].weight._backward_hooks

def test_artifacts_dir(gva_artifacts):
    assert gva_artifacts.is_dir()
""")
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=3)


def test_loading_the_plugin_does_not_import_torch():
    code = ("import sys, graphviz_autograd.pytest_plugin; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert "torch" not in vars(plugin)
