""":func:`diagnose`: run (or take) one forward and backward pass and explain
why gradients do not flow.

Example:
    >>> import torch, graphviz_autograd.diagnose as gd
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> d = gd.diagnose(net, inputs=torch.randn(16, 4), target=torch.tensor([0, 1] * 8))
    >>> d.ok
    True
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from graphviz_autograd.diagnosis import batch, failures, flow, numeric, residual
from graphviz_autograd.diagnosis.backward import BackwardWatch
from graphviz_autograd.diagnosis.findings import Diagnosis, Finding, FindingKind
from graphviz_autograd.diagnosis.watch import ForwardWatch, ModuleOutputs
from graphviz_autograd.errors import DiagnoseInputError, describe
from graphviz_autograd.graph.model import Graph
from graphviz_autograd.live.frames import IGNORED_SOURCE, user_frame
from graphviz_autograd.live.grads import backward_grads
from graphviz_autograd.live.instrument import instrument
from graphviz_autograd.live.models import eager, parameter_names, unwrap
from graphviz_autograd.live.modules import ModuleTracker
from graphviz_autograd.live.walk import walk
from graphviz_autograd.tracer import trace_nodes

_EMPTY = Graph(nodes=(), edges=(), roots=())


def diagnose(model: torch.nn.Module, loss=None, *, inputs=None, loss_fn: Callable | None = None,
             target=None, vanish_ratio: float = 1e-6, explode_norm: float = 1e3,
             vanish_chain: float = 1e-5, dead_fraction: float = 0.5,
             saturated_fraction: float = 0.5,
             checks: Iterable[FindingKind | str] | None = None) -> Diagnosis:
    """Run one forward and backward pass and explain why gradients do not flow.

    Give either ``inputs`` (preferred: diagnose runs the forward itself under
    :func:`~graphviz_autograd.instrument`, so every finding names module and
    source line), a function computing the loss (same, for custom forwards),
    or an existing ``loss`` tensor (then only graph-level checks are possible).
    Gradients are computed with ``torch.autograd.grad(..., retain_graph=True)``:
    ``.grad`` of your parameters is not touched and you can still call
    ``loss.backward()``. If backward already ran, ``.grad`` is read instead.

    Args:
        model: the network.
        loss: a loss tensor, or a zero-argument function returning one.
        inputs: the model input: a tensor, a tuple of positional inputs, or a dict
            of keyword inputs.
        loss_fn: ``loss_fn(output, target)`` (or ``loss_fn(output)`` without
            target). Default: cross-entropy for an integer target, MSE for a
            float target; without target, MSE against a fixed random target (not
            the sum or the mean square of the output: those are constant for softmax
            or LayerNorm outputs, whose gradients would then all be zero).
        target: the target passed to ``loss_fn``.
        vanish_ratio: a layer whose ``|grad| / |weights|`` is below this does not train.
        explode_norm: a layer whose gradient norm is above this explodes.
        vanish_chain: report a chain of layers along which the gradient norm
            falls by more than this factor.
        dead_fraction: report ReLU call sites with at least this fraction of dead units.
        saturated_fraction: same for saturated sigmoid/tanh units.
        checks: only report these finding kinds (default: all).

    Returns:
        A :class:`Diagnosis`. A forward that fails with a shape error, and a
        backward that fails because of an in-place write, become findings
        instead of exceptions; other exceptions propagate unchanged.

    Raises:
        DiagnoseInputError: bad arguments (say which and how to call it).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1)
        >>> print(diagnose(net, inputs=torch.randn(4, 3)).ok)
        True
    """
    if not isinstance(model, torch.nn.Module):
        raise DiagnoseInputError(f"diagnose() needs the model (an nn.Module) first, got "
                                 f"{describe(model)}; call diagnose(model, inputs=x)")
    if loss is not None and inputs is not None:
        raise DiagnoseInputError("pass either loss= or inputs= to diagnose(), not both: with "
                                 "inputs= diagnose runs the forward itself (recommended)")
    if inputs is not None:
        def compute():
            return _make_loss(_call(model, inputs), loss_fn, target)
    elif callable(loss) and not isinstance(loss, torch.Tensor):
        compute = loss
    elif isinstance(loss, torch.Tensor):
        compute = None
    else:
        raise DiagnoseInputError(
            f"diagnose() got loss={describe(loss)} and no inputs; pass inputs=x (the model input), "
            "loss=<tensor>, or loss=<function returning the loss>")
    wanted = None if checks is None else {FindingKind(c) for c in checks}
    # Value checks feed these kinds (dead units explain zero gradients, a NaN forward
    # explains NaN gradients); skip them only when none of these is wanted.
    values = wanted is None or bool(wanted - {FindingKind.UNUSED_PARAMETER,
                                              FindingKind.SHAPE_ERROR, FindingKind.INPLACE_ERROR})
    run = _Run(model, dict(vanish_ratio=vanish_ratio, explode_norm=explode_norm,
                           vanish_chain=vanish_chain, dead_fraction=dead_fraction,
                           saturated_fraction=saturated_fraction, check_values=values))
    token = IGNORED_SOURCE.set(user_frame())
    try:
        result = run.go(compute, loss, inputs)
    finally:
        run.release()
        IGNORED_SOURCE.reset(token)
    if wanted is not None:
        result = dataclasses.replace(result, findings=tuple(f for f in result.findings
                                                            if f.kind in wanted))
    return result


def _call(model, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _batch_of(inputs) -> int | None:
    """Examples in the model input: the leading size of its first tensor of 2+ dimensions
    (0: no batch dimension; None: not known before the forward runs)."""
    if inputs is None:
        return None
    for t in torch.utils._pytree.tree_leaves(inputs):
        if isinstance(t, torch.Tensor):
            return int(t.shape[0]) if t.dim() >= 2 else 0
    return None


def _make_loss(out, loss_fn, target):
    if loss_fn is not None:
        return loss_fn(out) if target is None else loss_fn(out, target)
    if target is not None:
        if isinstance(target, torch.Tensor) and not target.is_floating_point():
            return F.cross_entropy(out, target)
        return F.mse_loss(out, target)
    leaves = [t for t in torch.utils._pytree.tree_leaves(out)
              if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not leaves:
        raise DiagnoseInputError(f"the model returned {describe(out)}, with no float tensor to "
                                 "build a loss from; pass loss_fn= (and target=)")
    gen = torch.Generator().manual_seed(0)
    return sum(F.mse_loss(t, torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device))
               for t in leaves)


class _Run:
    """State of one diagnosis; every hook it installs is removed by :meth:`release`."""

    def __init__(self, model, opts):
        self.model = model = unwrap(model)      # DDP, torch.compile: names of the plain model
        self.opts = opts
        self.names = parameter_names(model)
        self.trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.bw = BackwardWatch()
        self.calls: ModuleTracker | None = None     # the forward's modules (while instrumented)
        self.outputs = ModuleOutputs()
        self.watch: ForwardWatch | None = None
        self.notes: list[str] = []
        self.rerun = None                   # the forward + loss, when diagnose may run it again

    def release(self) -> None:
        self.bw.remove()

    def _trace(self, roots) -> tuple[Graph, dict]:
        """The graph behind ``roots`` and ``{live node: graph id}`` of its nodes."""
        node_ids: dict = {}
        graph = trace_nodes(roots, model=self.model, visit=node_ids.__setitem__)
        return graph, node_ids

    def go(self, compute, loss, inputs) -> Diagnosis:
        # only a forward diagnose made itself is run twice (a user's loss function may not
        # be safe to call again: it could draw the next batch)
        self.rerun = compute if inputs is not None else None
        if compute is not None:
            labels = dict(self.names)
            for i, t in enumerate(torch.utils._pytree.tree_leaves(inputs)):
                if isinstance(t, torch.Tensor):
                    labels.setdefault(id(t), f"inputs[{i}]")
            try:
                with torch.enable_grad(), instrument(self.model, on_node=self.bw.on_node,
                                                     on_output=self.outputs) as state:
                    self.calls = calls = state.tracker
                    self.watch = ForwardWatch(labels, lambda: calls.current,
                                              check_values=self.opts["check_values"],
                                              batch=_batch_of(inputs),
                                              in_model=lambda: bool(calls.stack))
                    with self.watch, eager():    # a compiled model runs its Python: watched, not traced
                        loss = compute()
            except (RuntimeError, ValueError) as exc:
                pending = failures.forward_failure(exc, self.watch, self.calls, self.model)
                if pending is None:
                    raise
                return self._partial(pending)
            if not isinstance(loss, torch.Tensor):
                raise DiagnoseInputError(f"the loss function returned {describe(loss)}; it must "
                                         "return a tensor")
            self.notes.extend(f"recording problem: {p}" for p in self.watch.problems)
        else:
            if loss.grad_fn is not None:
                self.bw.attach(walk([loss.grad_fn]))
            self.notes.append("only the loss tensor was given: dead/saturated units, NaN origins "
                              "in the forward and the places where paths break were not checked "
                              "(pass inputs= to check them)")
        return self._analyse(loss)

    def _partial(self, pending: flow.Pending) -> Diagnosis:
        graph, node_ids = self._trace(pending.roots) if pending.roots else (_EMPTY, {})
        nodes = tuple(i for i in (node_ids.get(n) for n in pending.live_nodes) if i)
        params = tuple(f"param:{p}" for p in pending.finding.params if f"param:{p}" in graph)
        finding = dataclasses.replace(pending.finding, nodes=nodes + params)
        mixes = batch.mixing_findings(self.watch, node_ids, self.model)
        if mixes and finding.kind is FindingKind.SHAPE_ERROR:
            finding = failures.after_mixing(finding, mixes[0])
        return Diagnosis(findings=(*mixes, finding), graph=graph, loss=None,
                         notes=tuple(self.notes))

    def _analyse(self, loss: torch.Tensor) -> Diagnosis:
        loss_value = float(loss.detach().double().sum()) if loss.numel() else None
        if loss.requires_grad:
            graph, node_ids = self._trace({"loss": loss})
        else:
            graph, node_ids = _EMPTY, {}
            self.notes.append(f"the loss {describe(loss)} does not require grad: no parameter "
                              "can get a gradient from it")
        hidden = _hidden_params(graph)      # reached through reentrant checkpoints
        used = set(graph.params) | hidden
        op_names = self.watch.op_names if self.watch is not None else {}
        pendings = flow.analyse_unused(self.model, self.trainable, used, self.watch, self.calls,
                                       self.outputs.outputs, op_names)
        extra = {k: v for p in pendings for k, v in p.roots.items()}
        if extra:
            graph, node_ids = self._trace({"loss": loss, **extra} if loss.requires_grad else extra)
        idmap = node_ids
        findings: list[Finding] = []
        for p in pendings:
            nodes = tuple(i for i in (idmap.get(n) for n in p.live_nodes) if i)
            findings.append(dataclasses.replace(p.finding, nodes=nodes))
        grads, failed = self._gradients(loss, used, by_backward=bool(hidden))
        if failed is not None:
            findings.append(failures.inplace_backward(failed, loss, self.watch, idmap, op_names))
        fwd = numeric.nonfinite_forward(loss_value, self.watch, idmap, op_names)
        if fwd is not None:
            findings.append(fwd)
        elif failed is None:
            bad = numeric.nonfinite_gradient(self.bw, grads, idmap, op_names)
            if bad is not None:
                findings.append(bad)
        order = self.calls.order if self.calls is not None else {}
        layers = numeric.layer_stats(self.model, grads, order)
        act = []
        if self.watch is not None:
            act = numeric.activation_findings(self.watch, idmap, self.model,
                                              self.opts["dead_fraction"],
                                              self.opts["saturated_fraction"])
        findings.extend(batch.mixing_findings(self.watch, idmap, self.model))
        if fwd is None and failed is None and loss.requires_grad:
            gating = residual.Gating(graph, self.trainable, grads, act)
            findings.extend(gating.findings)
            act = gating.act
            findings.extend(act)
            scale = self._scale_findings(gating, layers, graph)
            findings.extend(scale)
        else:
            findings.extend(act)
        findings = [_with_param_nodes(f, graph) for f in findings]
        findings.sort(key=lambda f: -f.severity.rank)
        return Diagnosis(findings=tuple(findings), graph=graph, loss=loss_value,
                         layers=tuple(layers), notes=tuple(self.notes))

    def _scale_findings(self, gating, layers, graph: Graph) -> list[Finding]:
        """Vanishing and exploding gradients; a vanishing that only small scales cause (they
        vanish no more with the scales opened to 1) becomes part of the scales' note."""
        def check(stats, skip=frozenset(), scaled=frozenset()):
            return numeric.gradient_scale(stats, self.opts["vanish_ratio"],
                                          self.opts["explode_norm"], self.opts["vanish_chain"],
                                          set(skip) | gating.skip, self.model,
                                          saturating=_saturating(graph), scaled=scaled)

        checked, skip, scaled = gating.compensated(layers)
        found = check(checked, skip, scaled)
        vanishing = [f for f in found if f.kind is FindingKind.VANISHING]
        if not vanishing or not gating.openable or self.rerun is None:
            return found
        opened = residual.opened_layers(self.model, self.trainable, self.rerun, gating.openable,
                                        self.calls.order if self.calls is not None else {})
        if opened is None:
            return found
        others = [f for f in found if f.kind is not FindingKind.VANISHING]
        still = [f for f in check(opened, skip) if f.kind is FindingKind.VANISHING]
        if still:                       # the scales' share left out: what remains is real
            return others + [gating.measured_opened(f) for f in still]
        return others + [gating.opened_note(vanishing[0])]

    def _gradients(self, loss, used: set[str], by_backward: bool = False):
        """``({name: grad or None}, in-place error message or None)``; ``.grad`` is not touched."""
        grads = {n: None for n, _ in self.trainable}
        targets = [(n, p) for n, p in self.trainable if n in used]
        if not targets or not loss.requires_grad:
            return grads, None
        if by_backward:     # reentrant checkpoints refuse autograd.grad
            self.notes.append("the graph holds reentrant checkpoints (use_reentrant=True), which "
                              "hide their ops and parameters; gradients were computed with a "
                              "backward pass whose writes to .grad were undone")
            got = backward_grads(loss, [p for _, p in targets])
            grads.update({n: g for (n, _), g in zip(targets, got)})
            return grads, None
        try:
            seed = None if loss.numel() == 1 else torch.ones_like(loss)
            got = torch.autograd.grad(loss, [p for _, p in targets], grad_outputs=seed,
                                      retain_graph=True, allow_unused=True)
        except RuntimeError as exc:
            text = str(exc)
            if "modified by an inplace operation" in text:
                return grads, text
            if "second time" in text or "already been freed" in text:
                self.notes.append("backward had already run on this loss, so gradients were read "
                                  "from .grad (including anything accumulated before) and the "
                                  "first NaN/Inf node in backward could not be watched")
                grads.update({n: p.grad for n, p in targets})
                return grads, None
            raise
        grads.update({n: g for (n, _), g in zip(targets, got)})
        return grads, None


def _hidden_params(graph: Graph) -> set[str]:
    """Parameters the graph does not reach but whose gradients flow through a reentrant
    checkpoint node (its ``hidden_params`` attr)."""
    out: set[str] = set()
    for n in graph.nodes:
        names = dict(n.attrs).get("hidden_params", "")
        out.update(p.strip() for p in names.split(",") if p.strip())
    return out


def _saturating(graph: Graph) -> bool:
    """Whether the network has sigmoid/tanh (then the vanishing hint mentions them)."""
    return any(n.op.startswith(("SigmoidBackward", "TanhBackward")) for n in graph.nodes)


def _with_param_nodes(f: Finding, graph: Graph) -> Finding:
    """Add the graph ids of the finding's parameters (and module's) to its nodes."""
    extra = [f"param:{p}" for p in f.params if f"param:{p}" in graph]
    if f.kind in (FindingKind.VANISHING, FindingKind.EXPLODING) and f.module is not None:
        extra += [n.id for n in graph.params.values() if n.param.rpartition(".")[0] == f.module]
    if not extra:
        return f
    return dataclasses.replace(f, nodes=tuple(dict.fromkeys(f.nodes + tuple(extra))))
