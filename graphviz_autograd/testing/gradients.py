"""Gradient assertions: gradients reach every parameter, stay finite, do not vanish.

Each assertion takes the model and either a loss tensor, a zero-argument function
returning the loss (then the forward is watched and failures name the module and
source line), or ``inputs=``. Gradients are computed with
``torch.autograd.grad(retain_graph=True)``, so ``.grad`` stays untouched and you can
still call ``loss.backward()``; if backward already ran, ``.grad`` is read instead.
Under pytest with ``--gva-artifacts DIR`` a failing assertion writes the offending
subgraph (SVG) and the full graph (JSON) there and names them in the message.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from pathlib import Path
from typing import Iterable

from graphviz_autograd.errors import DiagnoseInputError, GradientFlowError, RenderError
from graphviz_autograd.testing.settings import settings

# The finding kinds each assertion fails on (error severity only, as the doctor's exit code):
# the kinds it is about, plus the failures that stop a gradient from being computed at all.
_STOPS = ("shape_error", "inplace_error")
_FLOW = ("unused_parameter", "zero_gradient", "dead_units", "batch_mixing") + _STOPS
_FINITE = ("nonfinite_forward", "nonfinite_gradient", "nonfinite_loss") + _STOPS
_VANISH = ("vanishing",) + _STOPS
_NO_GRADIENT = ("unused_parameter", "zero_gradient", "dead_units")

def assert_gradients_flow(model, loss=None, *, inputs=None, target=None, loss_fn=None,
                          ignore: Iterable[str] = (), artifacts=None):
    """Assert every trainable parameter of ``model`` gets a gradient from ``loss``.

    Fails on the error-level findings of :func:`~graphviz_autograd.diagnose` about
    gradient flow: ``unused_parameter`` (no path to the loss), ``zero_gradient`` and
    ``dead_units`` (a gradient that is exactly zero everywhere is no gradient),
    ``batch_mixing`` (a reshape mixes the examples of the batch), and a forward or
    backward that fails (``shape_error``, ``inplace_error``). The doctor reports the
    same findings with the same severities.

    Args:
        model: the network.
        loss: the loss tensor, or a zero-argument function computing it (better:
            the failure then names the op and line where the path breaks).
        inputs, target, loss_fn: instead of ``loss``, as in :func:`diagnose`.
        ignore: glob patterns of parameter names allowed to get no gradient.
        artifacts: directory for the failure's SVG/JSON (default: ``--gva-artifacts``).

    Returns:
        The :class:`~graphviz_autograd.diagnosis.Diagnosis` (for further checks).

    Raises:
        GradientFlowError: naming each parameter without gradient and where its path breaks.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> assert_gradients_flow(net, lambda: net(torch.ones(1, 2)).sum()).ok
        True
    """
    __tracebackhide__ = True
    d = _diagnose(model, loss, inputs, target, loss_fn, _FLOW)
    patterns = tuple(ignore)
    bad = []
    for f in _errors(d):
        if f.kind.value in _NO_GRADIENT and f.params:
            params = tuple(p for p in f.params if not any(fnmatch.fnmatch(p, g) for g in patterns))
            if not params:
                continue
            if params != f.params:
                f = dataclasses.replace(f, params=params)
        bad.append(f)
    if bad:
        total = sum(1 for p in model.parameters() if p.requires_grad)
        missing = len({p for f in bad if f.kind.value in _NO_GRADIENT for p in f.params})
        head = (f"gradients do not reach {missing} of {total} trainable parameters of "
                f"{type(model).__name__}" if missing else
                f"gradients cannot be computed for {type(model).__name__}")
        _fail(head, d, bad, "gradients_flow", artifacts)
    return d


def assert_finite_gradients(model, loss=None, *, inputs=None, target=None, loss_fn=None,
                            artifacts=None):
    """Assert the loss and every gradient of ``model`` are finite (no NaN/Inf).

    On failure the message names the first forward op that produced NaN/Inf or,
    when the forward was finite, the first backward node that did, with its
    module and source line. Arguments as in :func:`assert_gradients_flow`.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> assert_finite_gradients(net, net(torch.ones(1, 2)).sum()).ok
        True
    """
    __tracebackhide__ = True
    d = _diagnose(model, loss, inputs, target, loss_fn, _FINITE)
    if _errors(d):
        _fail(f"non-finite values in the loss or gradients of {type(model).__name__}", d,
              _errors(d), "finite_gradients", artifacts)
    return d


def assert_no_vanishing_gradients(model, loss=None, *, min_ratio: float = 1e-6,
                                  max_decay: float = 1e-5, inputs=None, target=None,
                                  loss_fn=None, artifacts=None):
    """Assert no layer's gradient vanishes.

    Args:
        min_ratio: fail when a layer's ``|grad| / |weights|`` is below this.
        max_decay: fail when, going backward through the layers, the gradient
            norm falls below this fraction of a later layer's.
        (others as in :func:`assert_gradients_flow`)

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> assert_no_vanishing_gradients(net, net(torch.ones(3, 2)).sum()).ok
        True
    """
    __tracebackhide__ = True
    d = _diagnose(model, loss, inputs, target, loss_fn, _VANISH,
                  vanish_ratio=min_ratio, vanish_chain=max_decay)
    if _errors(d):
        _fail(f"vanishing gradients in {type(model).__name__}", d, _errors(d),
              "no_vanishing_gradients", artifacts)
    return d


def _errors(d) -> list:
    """The error-level findings of ``d`` (warnings and notes never fail an assertion)."""
    return [f for f in d.findings if f.severity.value == "error"]


def _diagnose(model, loss, inputs, target, loss_fn, kinds, **options):
    from graphviz_autograd.diagnosis.core import diagnose

    if loss is None and inputs is None:
        raise DiagnoseInputError("pass the loss (a tensor, or a function computing it) or "
                                 "inputs=... to the assertion, e.g. "
                                 "assert_gradients_flow(model, lambda: model(x).sum())")
    return diagnose(model, loss, inputs=inputs, target=target, loss_fn=loss_fn, checks=kinds,
                    **options)


def _fail(head: str, d, findings, helper: str, artifacts) -> None:
    __tracebackhide__ = True
    written = _write_artifacts(d, findings, helper, artifacts)
    lines = [head + ":", ""]
    lines.extend(str(f) for f in findings)
    if written:
        lines.append("")
        lines.append("graph files: " + ", ".join(written))
    raise GradientFlowError("\n".join(lines), diagnosis=d, artifacts=tuple(written))


def _test_name() -> str:
    current = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    name = current.rsplit("/", 1)[-1].replace("::", "__") if current else "gva"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:120] or "gva"


def _write_artifacts(d, findings, helper: str, directory) -> list[str]:
    directory = directory or settings().get("artifacts")
    if not directory:
        return []
    from graphviz_autograd.graph.model import Graph

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{_test_name()}-{helper}"
    written = []
    full = out / f"{stem}.json"
    full.write_text(d.graph.to_json(indent=1), encoding="utf-8")
    written.append(str(full))
    keep: set[str] = set()
    for f in findings:
        keep.update(n.id for n in d.subgraph_for(f).nodes)
    sub = d.graph.subgraph(keep) if keep else Graph(nodes=(), edges=(), roots=())
    title = "; ".join(f.title for f in findings)[:200]
    try:
        written.insert(0, sub.render(str(out / f"{stem}.svg"), highlight=d.highlight,
                                     title=title))
    except RenderError as exc:       # no Graphviz: keep the DOT text
        written.insert(0, sub.render(str(out / f"{stem}.dot"), highlight=d.highlight,
                                     title=title))
        written.append(f"(SVG not rendered: {exc})")
    return written
