"""Assertions for your test suite: gradients reach every parameter, stay finite,
do not vanish; a traced graph matches a reviewed golden file.

Each gradient assertion takes the model and either a loss tensor, a
zero-argument function returning the loss (then the forward is watched and
failures name the module and source line), or ``inputs=``. Gradients are
computed with ``torch.autograd.grad(retain_graph=True)``, so ``.grad`` stays
untouched and you can still call ``loss.backward()``; if backward already ran,
``.grad`` is read instead. Under pytest with ``--gva-artifacts DIR`` a failing
assertion writes the offending subgraph (SVG) and the full graph (JSON) there
and names them in the message.

Example:
    >>> import torch
    >>> from graphviz_autograd.testing import assert_gradients_flow
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    >>> _ = assert_gradients_flow(net, net(torch.randn(5, 3)).sum())
"""
from __future__ import annotations

from graphviz_autograd.testing.golden import UPDATE_ENV, assert_graph_matches, graph_diff
from graphviz_autograd.testing.gradients import (assert_finite_gradients, assert_gradients_flow,
                                                 assert_no_vanishing_gradients)
from graphviz_autograd.testing.tracker import GradientTracker

__all__ = ["UPDATE_ENV", "GradientTracker", "assert_finite_gradients", "assert_gradients_flow",
           "assert_graph_matches", "assert_no_vanishing_gradients", "graph_diff"]
