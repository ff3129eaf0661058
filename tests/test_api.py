"""The public surface, pinned; and the torch-free parts stay torch-free."""
import subprocess
import sys

import graphviz_autograd as ga

PUBLIC = ["Edge", "Graph", "GraphvizAutogradError", "Node", "NodeKind", "Recorder", "SavedTensor",
          "TensorMeta", "diagnose", "instrument", "load_graph", "open_run", "trace"]


def test_public_names_are_pinned_and_resolve():
    assert ga.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(ga, name) is not None


def test_store_model_and_exports_import_without_torch():
    code = ("import sys, graphviz_autograd.store, graphviz_autograd.model, graphviz_autograd.export.dot, "
            "graphviz_autograd.export.serialize, graphviz_autograd.export.collapse; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_errors_subclass_the_fitting_builtins():
    from graphviz_autograd import errors as E
    assert issubclass(E.NotDifferentiableError, ValueError)
    assert issubclass(E.TraceInputError, TypeError)
    assert issubclass(E.RunNotFoundError, FileNotFoundError)
    assert issubclass(E.RenderError, RuntimeError)
    for cls in (E.NotDifferentiableError, E.StoreError, E.ConfigError, E.ModelSpecError):
        assert issubclass(cls, E.GraphvizAutogradError)
