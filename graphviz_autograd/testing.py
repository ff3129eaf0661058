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

import dataclasses
import difflib
import fnmatch
import math
import os
import re
import sys
from pathlib import Path
from typing import Iterable

from .errors import (DiagnoseInputError, FormatError, GoldenGraphError, GradientFlowError,
                     RenderError)

UPDATE_ENV = "GVA_UPDATE_GOLDEN"
_FLOW = ("unused_parameter", "shape_error", "inplace_error")
_FINITE = ("nonfinite_forward", "nonfinite_gradient", "shape_error", "inplace_error")
_VANISH = ("vanishing", "shape_error", "inplace_error")


def _settings() -> dict:
    """Options the pytest plugin set for this session (``{}`` outside pytest)."""
    plugin = sys.modules.get("graphviz_autograd.pytest_plugin")
    return dict(getattr(plugin, "SETTINGS", {}) or {})


def assert_gradients_flow(model, loss=None, *, inputs=None, target=None, loss_fn=None,
                          ignore: Iterable[str] = (), artifacts=None):
    """Assert every trainable parameter of ``model`` gets a gradient from ``loss``.

    Args:
        model: the network.
        loss: the loss tensor, or a zero-argument function computing it (better:
            the failure then names the op and line where the path breaks).
        inputs, target, loss_fn: instead of ``loss``, as in :func:`diagnose`.
        ignore: glob patterns of parameter names allowed to get no gradient.
        artifacts: directory for the failure's SVG/JSON (default: ``--gva-artifacts``).

    Returns:
        The :class:`~graphviz_autograd.diagnose.Diagnosis` (for further checks).

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
    for f in d.findings:
        if f.kind.value == "unused_parameter":
            params = tuple(p for p in f.params if not any(fnmatch.fnmatch(p, g) for g in patterns))
            if not params:
                continue
            if params != f.params:
                f = dataclasses.replace(f, params=params)
        bad.append(f)
    if bad:
        total = sum(1 for p in model.parameters() if p.requires_grad)
        missing = sum(len(f.params) for f in bad if f.kind.value == "unused_parameter")
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
    if d.findings:
        _fail(f"non-finite values in the loss or gradients of {type(model).__name__}", d,
              list(d.findings), "finite_gradients", artifacts)
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
    if d.findings:
        _fail(f"vanishing gradients in {type(model).__name__}", d, list(d.findings),
              "no_vanishing_gradients", artifacts)
    return d


def _diagnose(model, loss, inputs, target, loss_fn, kinds, **options):
    from .diagnose import diagnose

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
    directory = directory or _settings().get("artifacts")
    if not directory:
        return []
    from .model import Graph

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


# -- golden graphs ----------------------------------------------------------------
def assert_graph_matches(graph, golden_path, *, update: bool | None = None,
                         keep_source: bool = False) -> None:
    """Assert ``graph`` equals the reviewed golden file at ``golden_path``.

    ``.json`` goldens compare the graph structure (ids, kinds, ops, modules,
    shapes, edges); ``.dot``/``.gv`` goldens compare the DOT text. Source lines
    and saved-tensor details are left out unless ``keep_source=True``, so
    editing unrelated code does not break the test.

    Args:
        graph: a :class:`~graphviz_autograd.model.Graph`.
        golden_path: where the golden file lives (commit it).
        update: write the golden file instead of comparing. Default: only when
            ``GVA_UPDATE_GOLDEN=1`` or pytest ran with ``--gva-update-golden``.

    Raises:
        GoldenGraphError: the file is missing or differs (the message lists the
            differences and how to accept them).

    Example:
        >>> import tempfile, os
        >>> from graphviz_autograd.model import Graph
        >>> path = os.path.join(tempfile.mkdtemp(), "g.json")
        >>> assert_graph_matches(Graph(nodes=(), edges=(), roots=()), path, update=True)
        >>> assert_graph_matches(Graph(nodes=(), edges=(), roots=()), path)
    """
    __tracebackhide__ = True
    path = Path(golden_path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("json", "dot", "gv"):
        raise FormatError(f"golden file {str(path)!r} must end in .json, .dot or .gv (got "
                          f"{path.suffix or 'no suffix'!r}); .json compares structure")
    plain = _normalise(graph, keep_source)
    text = plain.to_json(indent=1) + "\n" if fmt == "json" else plain.to_dot(legend=False)
    if update is None:
        update = bool(_settings().get("update_golden")) or os.environ.get(UPDATE_ENV) == "1"
    how = f"rerun with --gva-update-golden (or {UPDATE_ENV}=1), review the change and commit it"
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    if not path.exists():
        raise GoldenGraphError(f"golden graph {str(path)!r} does not exist; to create it, {how}")
    golden = path.read_text(encoding="utf-8")
    if golden == text:
        return
    if fmt == "json":
        from .export.serialize import from_json

        try:
            diff = graph_diff(from_json(golden), plain)
        except FormatError as exc:
            diff = [f"the golden file is not a graph JSON ({exc})"]
    else:
        diff = list(difflib.unified_diff(golden.splitlines(), text.splitlines(), "golden",
                                         "graph", lineterm="", n=1))[:60]
    diff = diff or ["(same structure, different text: formatting or attribute order changed)"]
    raise GoldenGraphError(f"graph differs from golden {str(path)!r}:\n  " + "\n  ".join(diff)
                           + f"\nIf the change is intended, {how}.")


def _normalise(graph, keep_source: bool):
    from .model import Graph

    if keep_source:
        return graph
    nodes = tuple(_replace(n, source="", saved=()) for n in graph.nodes)
    return Graph(nodes=nodes, edges=graph.edges, roots=graph.roots)


def _replace(node, **changes):
    """A copy of ``node`` with ``changes`` (nodes are named tuples or frozen dataclasses)."""
    if hasattr(node, "_replace"):
        return node._replace(**changes)
    return dataclasses.replace(node, **changes)


def graph_diff(old, new, limit: int = 40) -> list[str]:
    """Readable differences between two graphs: nodes, node fields, edges, roots."""
    lines = []
    old_ids, new_ids = {n.id for n in old.nodes}, {n.id for n in new.nodes}
    for nid in sorted(old_ids - new_ids):
        lines.append(f"- node {nid} ({old.node(nid).op}) is gone")
    for nid in sorted(new_ids - old_ids):
        lines.append(f"+ node {nid} ({new.node(nid).op}) is new")
    for nid in sorted(old_ids & new_ids):
        a, b = old.node(nid), new.node(nid)
        for fld in ("kind", "op", "module", "param", "outputs", "seq", "attrs"):
            va, vb = getattr(a, fld), getattr(b, fld)
            if va != vb:
                if fld == "outputs":
                    va = [m.short() if m else None for m in va]
                    vb = [m.short() if m else None for m in vb]
                lines.append(f"~ node {nid}: {fld} {va} -> {vb}")
    old_e = {(e.src, e.dst, e.output_nr, e.input_nr) for e in old.edges}
    new_e = {(e.src, e.dst, e.output_nr, e.input_nr) for e in new.edges}
    lines += [f"- edge {s} -> {d}" for s, d, _o, _i in sorted(old_e - new_e)]
    lines += [f"+ edge {s} -> {d}" for s, d, _o, _i in sorted(new_e - old_e)]
    if old.roots != new.roots:
        lines.append(f"~ roots {list(old.roots)} -> {list(new.roots)}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more differences"]
    return lines


# -- recording gradients during a test ------------------------------------------------
class GradientTracker:
    """Records the gradient norm of each trainable parameter every time one is computed.

    Hooks go on the parameters themselves (``Tensor.register_hook``); the tracker
    owns them and :meth:`close` removes them (the ``gradient_tracker`` fixture
    does it at teardown; or use ``with GradientTracker(model) as t:``).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> with GradientTracker(net) as tracker:
        ...     net(torch.ones(3, 2)).sum().backward()
        >>> tracker.missing(), len(tracker.norms["weight"])
        ([], 1)
    """

    def __init__(self, model):
        self.model = model
        self.norms: dict[str, list[float]] = {}
        self._handles: list = []

    def start(self) -> "GradientTracker":
        import torch

        try:
            for name, p in self.model.named_parameters():
                if p.requires_grad:
                    self.norms.setdefault(name, [])
                    self._handles.append(p.register_hook(
                        lambda g, _n=name: self._record(_n, g, torch)))
        except BaseException:
            self.close()
            raise
        return self

    def _record(self, name: str, grad, torch) -> None:
        with torch.no_grad():
            self.norms[name].append(float(torch.linalg.vector_norm(grad.double())))

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "GradientTracker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def missing(self) -> list[str]:
        """Trainable parameters that never got a gradient while tracked."""
        return [n for n, v in self.norms.items() if not v]

    def nonfinite(self) -> list[str]:
        """Parameters that got a NaN/Inf gradient at least once."""
        return [n for n, v in self.norms.items() if not all(math.isfinite(x) for x in v)]

    def last(self) -> dict[str, float]:
        """The latest gradient norm of each parameter that got one."""
        return {n: v[-1] for n, v in self.norms.items() if v}

    def assert_all_received(self) -> None:
        """Fail naming each trainable parameter that never got a gradient."""
        __tracebackhide__ = True
        missing = self.missing()
        if missing:
            raise GradientFlowError(
                f"{len(missing)} of {len(self.norms)} trainable parameters of "
                f"{type(self.model).__name__} never got a gradient while tracked: "
                + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
                + ". Use assert_gradients_flow(model, lambda: <loss>) to see where their path "
                "to the loss breaks.")
