"""graphviz-autograd: see what PyTorch autograd built, and why a network does not learn.

Example:
    >>> import torch, graphviz_autograd as ga
    >>> net = torch.nn.Linear(4, 2)
    >>> graph = ga.trace(net(torch.randn(3, 4)).sum(), model=net)
    >>> graph.node("param:weight").outputs[0].shape
    (2, 4)

Names are imported lazily (PEP 562), so the torch-free parts (``graph``, ``store``,
``export``, the finding types) can be used, e.g. by the dashboard, without torch.
See "How the code is organised" in the README for the map of the packages.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "trace": ".tracer",
    "instrument": ".live.instrument",
    "Recorder": ".record.recorder",
    "open_run": ".store.run",
    "load_graph": ".graph.serialize",
    "diagnose": ".diagnosis.core",
    "Diagnosis": ".diagnosis.findings", "Finding": ".diagnosis.findings",
    "Graph": ".graph.model", "Node": ".graph.model", "Edge": ".graph.model",
    "NodeKind": ".graph.model", "TensorMeta": ".graph.model", "SavedTensor": ".graph.model",
    "GraphvizAutogradError": ".errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'graphviz_autograd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
