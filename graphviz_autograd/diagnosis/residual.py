"""Small scales in residual branches, seen on a live model: which parameters they (or dead
ReLUs) cut off the loss, what that explains, and a second pass with the scales opened.

:mod:`.scales` finds the gates on the graph and :mod:`.blocked` words the findings; this
module reads the live values they need (each scale's largest value, the gradients) and,
when a vanishing gradient remains, runs the forward and backward once more with every
scale set to 1 (``opened_layers``): if the gradient no longer vanishes, the scales did it
(a ViT or CaiT with layer scale reads its class token through gated branches only, which
the graph alone cannot show). The user's parameters, buffers and random state are
restored afterwards.

Example:
    >>> import torch, graphviz_autograd as ga
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    >>> ga.diagnose(net, inputs=torch.randn(8, 4)).ok
    True
"""
from __future__ import annotations

import dataclasses
import math

import torch

from graphviz_autograd.live.tensors import plain

from graphviz_autograd.diagnosis import blocked, numeric, scales
from graphviz_autograd.diagnosis.findings import Finding, FindingKind, Severity
from graphviz_autograd.graph.model import Graph


class Gating:
    """What small scales and dead ReLUs explain in one diagnosed pass.

    Attributes:
        act: the activation findings, dead ReLUs naming the parameters they starve.
        findings: the scales' note or warning and the unexplained exactly-zero gradients.
        skip: modules whose small gradient is explained (dead ReLUs, zero gradients).
        openable: parameters of the multiplicative scales a second pass may set to 1.
    """

    def __init__(self, graph: Graph, trainable, grads: dict, act: list[Finding]):
        params = dict(trainable)
        with torch.no_grad():
            self.absmax = {n: _absmax(p) for n, p in params.items()}
            self.norms = {n: _norm(g) for n, g in grads.items() if g is not None}
        self.gates = scales.find_gates(graph, self.absmax)
        dead = {f.nodes[0] for f in act if f.kind is FindingKind.DEAD_UNITS
                and f.severity is Severity.ERROR and f.nodes}
        roots = [r for r in graph.roots if r == "output:loss"] or None
        self.blocking = scales.Blocking(graph, {**{op: self.absmax[p] for op, p in self.gates.items()},
                                                **{n: 0.0 for n in dead}}, roots)
        zero = {n for n, g in grads.items() if g is not None and self.norms.get(n) == 0.0}
        explained = scales.explain(self.blocking, self.gates, self.norms, zero)
        self.rank = {n: i for i, n in enumerate(params)}
        starved: dict[str, list[str]] = {}
        for name, (reason, found) in sorted(explained.items(),
                                            key=lambda kv: self.rank.get(kv[0], len(self.rank))):
            for b in found:
                if reason == "dead" and b in dead:
                    starved.setdefault(b, []).append(name)
        self.act = [_starving(f, starved[f.nodes[0]], zero) if f.nodes and f.nodes[0] in starved
                    else f for f in act]
        self.findings = blocked.gate_findings(explained, self.gates, self.absmax, self.norms, self.rank)
        self.findings += blocked.zero_findings(zero, explained)
        self.skip = {p.rpartition(".")[0] for p, e in explained.items() if e[0] == "dead"}
        self.skip |= {p.rpartition(".")[0] for f in self.findings
                      if f.kind is FindingKind.ZERO_GRADIENT for p in f.params}
        self.owned: dict[str, list[str]] = {}
        for name in params:
            self.owned.setdefault(name.rpartition(".")[0], []).append(name)
        self.openable = sorted({p for op, p in self.gates.items()
                                if not scales.is_weight_gate(graph.node(op).op)})

    def compensated(self, layers):
        """:func:`.blocked.compensate` with the products of scales on each parameter's way."""
        return blocked.compensate(layers, self.owned, self.blocking.scale)

    def opened_note(self, vanishing: Finding) -> Finding:
        """The info note for a vanishing gradient that disappears with the scales set to 1."""
        shown = ", ".join(f"`{p}` (max |value| {self.absmax[p]:.2g})" for p in self.openable[:4])
        shown += f" and {len(self.openable) - 4} more" if len(self.openable) > 4 else ""
        return Finding(
            FindingKind.VANISHING, Severity.INFO,
            "the small gradients come from scales that start near zero, by design: "
            + vanishing.title.replace("vanishing gradients: ", ""),
            f"At this step {vanishing.title.replace('vanishing gradients: ', '')}. With every "
            f"small scale set to 1 ({shown}) the same pass shows no vanishing gradient: the "
            "layers are reached through branches the scales "
            "multiply (layer scale, zero-initialised residual branches), and the scales get "
            "gradients of their own, so they grow and the layers start learning.",
            "Nothing to fix if the scales are a deliberate initialisation (layer scale, "
            "zero_init_residual); otherwise initialise them like the other weights.",
            module=vanishing.module, values=vanishing.values)


    def measured_opened(self, vanishing: Finding) -> Finding:
        """A vanishing finding measured with the small scales set to 1, saying so."""
        return dataclasses.replace(vanishing, message=(
            f"{vanishing.message} (Measured with the {len(self.openable)} scales that start "
            "near zero set to 1, so the part of the fall they cause by design is left out.)"))


def opened_layers(model: torch.nn.Module, trainable, compute, openable, order):
    """Per-layer gradient statistics of one more pass with the ``openable`` scales set to 1.

    Parameters, buffers (BatchNorm's running statistics) and the random state are
    restored afterwards; ``.grad`` is not touched. Returns None when the pass fails.
    """
    params = dict(trainable)
    saved = {n: params[n].detach().clone() for n in openable if n in params}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            with torch.no_grad():
                for n in saved:
                    params[n].data.fill_(1.0)        # .data: no version bump for the user's graph
            loss = compute()
            if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                return None
            seed = None if loss.numel() == 1 else torch.ones_like(loss)
            names = list(params)
            got = torch.autograd.grad(loss, [params[n] for n in names], grad_outputs=seed,
                                      allow_unused=True)
        return numeric.layer_stats(model, dict(zip(names, got)), order)
    except Exception:  # noqa: BLE001 - a second look must never turn into a failure
        return None
    finally:
        with torch.no_grad():
            for n, value in saved.items():
                params[n].data.copy_(value)
            for b, value in buffers:
                b.data.copy_(value)


SMALL = 1 << 16      # scales (norm weights, layer scales) are vectors of this size at most


def _absmax(p: torch.Tensor) -> float:
    """max |p| for a small tensor (a scale); its norm, an upper bound, for a big one (a weight
    matrix gates only when nearly all zero, which the norm shows as well)."""
    p = plain(p)        # a DTensor's local shard; never torch ops on other subclasses
    if p is None:
        return math.inf
    if not p.numel():
        return 0.0
    if p.numel() <= SMALL:
        return float(p.detach().abs().max())
    return float(torch.linalg.vector_norm(p.detach()))


def _norm(g: torch.Tensor) -> float:
    """||g||, exactly 0.0 only when every element is 0 (float32 squares can underflow)."""
    g = plain(g)
    if g is None:
        return math.nan
    value = float(torch.linalg.vector_norm(g.detach()))
    if value == 0.0 and bool(g.detach().any()):
        value = float(torch.linalg.vector_norm(g.detach().double()))
    return value


def _starving(f: Finding, params: list[str], zero: set[str]) -> Finding:
    """A dead-units finding that names the parameters it leaves without gradient."""
    shown = ", ".join(f"`{p}`" for p in params[:6]) + (" ..." if len(params) > 6 else "")
    exact = all(p in zero for p in params)
    text = (f" As a result {shown} {'gets' if len(params) == 1 else 'get'} "
            f"{'an exactly zero' if exact else 'almost no'} gradient: "
            f"{'it does' if len(params) == 1 else 'they do'} not learn.")
    return dataclasses.replace(f, params=tuple(params), message=f.message + text)
