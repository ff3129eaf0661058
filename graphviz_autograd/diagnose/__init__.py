"""Explain why a network does not learn: unused parameters and where their path
breaks, NaN/Inf origins, vanishing/exploding gradients, dead/saturated units,
shape errors and in-place errors.

Example:
    >>> import torch
    >>> from graphviz_autograd.diagnose import diagnose
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    >>> diagnose(net, inputs=torch.randn(8, 4)).ok
    True
"""
from .core import diagnose
from .findings import Diagnosis, Finding, FindingKind, LayerStats, Severity

__all__ = ["Diagnosis", "Finding", "FindingKind", "LayerStats", "Severity", "diagnose"]
