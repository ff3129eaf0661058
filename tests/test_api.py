"""The public surface, pinned: every name resolves to what it claims, in any import order."""
import inspect
import subprocess
import sys

import graphviz_autograd as ga

PUBLIC = ["Diagnosis", "Edge", "Finding", "Graph", "GraphvizAutogradError", "Node", "NodeKind",
          "Recorder", "SavedTensor", "TensorMeta", "diagnose", "instrument", "load_graph",
          "open_run", "trace"]
FUNCTIONS = ["diagnose", "instrument", "load_graph", "open_run", "trace"]


def test_public_names_are_pinned_and_resolve_to_functions_and_classes():
    assert ga.__all__ == PUBLIC
    for name in PUBLIC:
        value = getattr(ga, name)
        if name in FUNCTIONS:
            assert inspect.isfunction(value) or callable(value), name
        else:
            assert inspect.isclass(value), name
    assert ga.Finding.__module__ == "graphviz_autograd.diagnosis.findings"
    assert ga.NodeKind.MODULE.value == "module"


# Every entry point a user reaches, then ga.diagnose must still be the function: a
# subpackage or module named like a public function would replace it on import.
USE_EVERYTHING = """
import torch, graphviz_autograd as ga
import graphviz_autograd.testing as gt, graphviz_autograd.diagnose as old
from graphviz_autograd.diagnose import Diagnosis
import graphviz_autograd.tracer, graphviz_autograd.diagnosis, graphviz_autograd.store
import graphviz_autograd.export.dot, graphviz_autograd.cli, graphviz_autograd.graph
net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
x = torch.randn(5, 3)
gt.assert_gradients_flow(net, inputs=x)
gt.assert_finite_gradients(net, inputs=x)
g = ga.trace(net(x).sum(), model=net)
with ga.instrument(net):
    net(x)
ga.load_graph(g.to_json())
d = ga.diagnose(net, inputs=x)
assert isinstance(d, Diagnosis) and d.ok, d
assert callable(ga.trace) and ga.trace(net(x).sum()).nodes
print("ok", type(ga.diagnose).__name__)
"""


def test_diagnose_stays_callable_after_every_entry_point_was_used():
    proc = subprocess.run([sys.executable, "-c", USE_EVERYTHING], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def test_graph_methods_take_the_arguments_of_the_export_functions():
    from graphviz_autograd.export import dot

    for method, function in ((ga.Graph.to_dot, dot.to_dot), (ga.Graph.render, dot.render),
                             (ga.Graph.to_graphviz, dot.to_graphviz)):
        ours = list(inspect.signature(method).parameters.values())[1:]
        theirs = list(inspect.signature(function).parameters.values())[1:]
        assert [(p.name, p.default) for p in ours] == [(p.name, p.default) for p in theirs]


def test_errors_subclass_the_fitting_builtins():
    from graphviz_autograd import errors as E
    assert issubclass(E.NotDifferentiableError, ValueError)
    assert issubclass(E.TraceInputError, TypeError)
    assert issubclass(E.RunNotFoundError, FileNotFoundError)
    assert issubclass(E.RenderError, RuntimeError)
    for cls in (E.NotDifferentiableError, E.StoreError, E.ConfigError, E.ModelSpecError):
        assert issubclass(cls, E.GraphvizAutogradError)
