"""Explain why a network does not learn: unused parameters and where their path
breaks, exactly-zero gradients, NaN/Inf origins, vanishing/exploding gradients (telling
apart residual branches that start at zero by design), dead/saturated units, reshapes
that mix the examples of a batch, shape errors and in-place errors.

``findings`` holds the plain result types (no torch; the dashboard reads them);
``core`` holds :func:`diagnose`, which runs the model under the watchers of
``watch`` and ``backward``; ``batch`` explains batch mixing; ``scales``/``blocked``
(no torch) and ``residual`` find what small scales and dead ReLUs cut off;
``recorded`` reads findings from a recorded run; ``update_rules`` (no torch) words the
optimizer's update of a parameter.
Names are loaded on first use, so importing the finding types never imports torch.

Example:
    >>> import torch, graphviz_autograd as ga
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    >>> ga.diagnose(net, inputs=torch.randn(8, 4)).ok
    True
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "diagnose": "graphviz_autograd.diagnosis.core",
    "run_findings": "graphviz_autograd.diagnosis.recorded",
    "Diagnosis": "graphviz_autograd.diagnosis.findings",
    "Finding": "graphviz_autograd.diagnosis.findings",
    "FindingKind": "graphviz_autograd.diagnosis.findings",
    "LayerStats": "graphviz_autograd.diagnosis.findings",
    "Severity": "graphviz_autograd.diagnosis.findings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'graphviz_autograd.diagnosis' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
