"""Numeric findings: NaN/Inf in forward and backward, vanishing and exploding
gradients, dead and saturated units.

Example:
    >>> from graphviz_autograd.diagnosis.findings import LayerStats
    >>> [f.kind.value for f in gradient_scale([LayerStats("fc", 5e4, 1.0, 10)], 1e-6, 1e3, 1e-5)]
    ['exploding']
"""
from __future__ import annotations

import math

import torch

from graphviz_autograd.live.tensors import plain

from graphviz_autograd.diagnosis.findings import Finding, FindingKind, LayerStats, Severity, plural
from graphviz_autograd.live.nodes import forward_name
from graphviz_autograd.diagnosis.watch import tag

FORWARD_HINTS = {
    "log": "log(0) = -inf and log(x < 0) = nan: clamp the input (x.clamp_min(1e-6)), or use "
           "log_softmax / log1p / F.logsigmoid instead of log of a softmax, sigmoid or ReLU output.",
    "sqrt": "sqrt(x < 0) = nan: clamp the input at 0, or add a small epsilon.",
    "rsqrt": "rsqrt(0) = inf and rsqrt(x < 0) = nan: add an epsilon to the input.",
    "div": "x / 0 = inf and 0 / 0 = nan: add an epsilon to the denominator.",
    "true_divide": "x / 0 = inf and 0 / 0 = nan: add an epsilon to the denominator.",
    "__truediv__": "x / 0 = inf and 0 / 0 = nan: add an epsilon to the denominator.",
    "exp": "exp(x) overflows to inf for x > 88 in float32: use logsumexp / softmax, or clamp.",
    "pow": "a negative base with a fractional exponent is nan; large values overflow.",
    "__pow__": "a negative base with a fractional exponent is nan; large values overflow.",
}
BACKWARD_HINTS = {
    "sqrt": "d/dx sqrt(x) = 1/(2*sqrt(x)) is infinite at x = 0 (e.g. the length of an all-zero "
            "vector). Add an epsilon inside the sqrt, or use torch.linalg.vector_norm, whose "
            "gradient at 0 is defined.",
    "log": "d/dx log(x) = 1/x is infinite at x = 0: clamp the input (x.clamp_min(1e-6)).",
    "div": "the gradient of x / y has 1/y and x/y^2 terms: the denominator has zeros; add an epsilon.",
    "pow": "d/dx x**p with p < 1 is infinite at x = 0: add an epsilon to the base.",
    "acos": "d/dx acos(x) is infinite at |x| = 1: clamp the input to (-1 + eps, 1 - eps).",
    "asin": "d/dx asin(x) is infinite at |x| = 1: clamp the input to (-1 + eps, 1 - eps).",
    "rsqrt": "d/dx rsqrt(x) is infinite at x = 0: add an epsilon.",
    "where": "torch.where still backpropagates through the branch it did not pick; a NaN "
             "gradient there becomes NaN * 0 = NaN. Make the unused branch safe (clamp its input).",
}


def _where(module: str, source: str) -> str:
    text = f" at {source}" if source else ""
    return text + (f" in module `{module}`" if module else "")


def nonfinite_forward(loss_value: float | None, watch, idmap: dict, op_names) -> Finding | None:
    """The first op of the forward whose result was NaN/Inf, when the loss is not finite."""
    if loss_value is None or math.isfinite(loss_value):
        return None
    if watch is None or not watch.nonfinite:
        return Finding(FindingKind.NONFINITE_FORWARD, Severity.ERROR, f"the loss is {loss_value}",
                       f"The loss is {loss_value}; every gradient computed from it is non-finite.",
                       "Run diagnose(model, inputs=...) so the forward is watched op by op and "
                       "the first op producing NaN/Inf can be named.")
    r = watch.nonfinite[0]
    counts = ", ".join(f"{n} {label}" for n, label in ((r.nan, "nan"), (r.posinf, "+inf"),
                                                       (r.neginf, "-inf")) if n)
    bad = [o for o in r.operands if not o[2]]
    if bad:
        label = bad[0][0]
        origin = ("the model input already contains NaN/Inf; check the data pipeline"
                  if label.startswith("inputs") else
                  f"`{label}` is already non-finite" + (" (a parameter: check the initialisation "
                                                        "or the previous optimizer step)"
                                                        if not label.startswith("operand") else ""))
        operands = f"; its operand {origin}"
    else:
        parts = []
        for label, shape, _finite, zeros, neg, lo, hi in r.operands[:3]:
            parts.append(f"{label} {shape}: {zeros} zeros, {neg} negatives, range [{lo:.3g}, {hi:.3g}]")
        made_by = [f"`{op_names.get(n._sequence_nr()) or forward_name(n.name())}`"
                   f"{_where(*tag(n))}" for n in r.input_nodes[:2]]
        operands = " from finite operands (" + "; ".join(parts) + ")"
        if made_by:
            operands += ", produced by " + " and ".join(made_by)
    message = (f"The loss is {loss_value}. The first non-finite value of the forward pass comes "
               f"from `{r.op}`{_where(r.module, r.source)}: it returned {counts} out of {r.numel} "
               f"values (shape {r.shape}){operands}. Every gradient is non-finite as a result.")
    hint = FORWARD_HINTS.get(r.op.rstrip("_"), "Check the operands of this op for zeros, "
                             "negatives or very large values (overflow).")
    return Finding(FindingKind.NONFINITE_FORWARD, Severity.ERROR,
                   f"the loss is {loss_value}: `{r.op}`{_where(r.module, r.source)} made the first NaN/Inf",
                   message, hint, nodes=tuple(i for i in [idmap.get(r.node)] if i),
                   module=r.module, source=r.source, op=r.op,
                   values=(("nan", float(r.nan)), ("inf", float(r.posinf + r.neginf))))


def nonfinite_gradient(bw, grads: dict, idmap: dict, op_names) -> Finding | None:
    """The first node, in backward order, that turned finite gradients into NaN/Inf."""
    bad_params = [n for n, g in grads.items() if g is not None and not bool(torch.isfinite(g).all())]
    first = bw.first_bad if bw is not None else None
    if first is None and not bad_params:
        return None
    plist = ", ".join(f"`{n}`" for n in bad_params[:6]) + (" ..." if len(bad_params) > 6 else "")
    if first is None:
        return Finding(FindingKind.NONFINITE_GRADIENT, Severity.ERROR,
                       f"non-finite gradients in {len(bad_params)} "
                       f"parameter{'s' * (len(bad_params) != 1)}",
                       f"{plist} {'has' if len(bad_params) == 1 else 'have'} NaN/Inf gradients. The backward pass was not watched (it had "
                       "already run), so the node where they first appeared is unknown.",
                       "Call diagnose before loss.backward(), or pass inputs= / a function "
                       "computing the loss.", params=tuple(bad_params))
    node = first.node
    module, source = tag(node)
    op = op_names.get(node._sequence_nr()) or forward_name(node.name())
    counts = " and ".join(t for t in (f"{first.nan} NaN" if first.nan else "",
                                      f"{first.inf} Inf" if first.inf else "") if t)
    incoming = ("its incoming gradient was finite" if first.incoming_finite
                else "its incoming gradient was already non-finite (overflow while summing)")
    message = (f"Backward produced the first non-finite gradient at {node.name()}, the backward of "
               f"`{op}`{_where(module, source)}: {incoming}, but the gradient it passes on has "
               f"{counts} of {first.numel} values. The forward pass itself was finite.")
    if bad_params:
        message += f" Parameters with non-finite gradients as a result: {plist}."
    hint = BACKWARD_HINTS.get(forward_name(node.name()),
                              BACKWARD_HINTS.get(op, "Check the inputs of this op for values "
                                                     "where its derivative is infinite or undefined."))
    return Finding(FindingKind.NONFINITE_GRADIENT, Severity.ERROR,
                   f"gradient turns NaN/Inf at {node.name()} (`{op}`{_where(module, source)})",
                   message, hint, nodes=tuple(i for i in [idmap.get(node)] if i),
                   params=tuple(bad_params), module=module, source=source, op=op,
                   values=(("nan", float(first.nan)), ("inf", float(first.inf))))


def layer_stats(model: torch.nn.Module, grads: dict, order: dict[str, int]) -> list[LayerStats]:
    """Per module owning trainable parameters: norms of its own gradients and parameters."""
    out = []
    for path, module in model.named_modules():
        g2 = p2 = 0.0
        numel, has_grad, nonfinite = 0, False, False
        for pname, p in module.named_parameters(recurse=False):
            full = f"{path}.{pname}" if path else pname
            g = grads.get(full)
            p = plain(p)            # a DTensor's shard; None for freed or unreadable data
            if p is None or not p.requires_grad or g is None or plain(g) is None:
                continue
            g = plain(g)
            has_grad = True
            gn = float(torch.linalg.vector_norm(g.detach().double()))
            nonfinite |= not math.isfinite(gn)
            g2 += gn * gn
            p2 += float(torch.linalg.vector_norm(p.detach().double())) ** 2
            numel += p.numel()
        if has_grad:
            out.append(LayerStats(path, math.sqrt(g2), math.sqrt(p2), numel, nonfinite))
    rank = {name: i for i, (name, _) in enumerate(model.named_modules())}
    out.sort(key=lambda s: (order.get(s.module, len(order) + rank[s.module])))
    return out


def gradient_scale(layers: list[LayerStats], vanish_ratio: float, explode_norm: float,
                   vanish_chain: float, skip=(), model: torch.nn.Module | None = None,
                   saturating: bool = True, scaled=()) -> list[Finding]:
    """Vanishing (per layer and along a chain of layers) and exploding gradients.

    ``skip``: modules whose small gradient is explained elsewhere (dead ReLUs, a zero
    scale). ``saturating``: the network has sigmoid/tanh (the hint then names them).
    ``scaled``: modules whose norms were divided by a small scale on their way to the loss
    (they are never the reference a chain's decay is measured from).
    """
    ok = [s for s in layers if not s.nonfinite and s.module not in skip]
    findings = []
    weak = [s for s in ok if s.ratio < vanish_ratio]
    chain = _chain(ok, vanish_chain, set(scaled))
    if chain is not None or weak:
        findings.append(_vanishing(ok, weak, chain, vanish_ratio, saturating))
    big = [s for s in ok if s.grad_norm > explode_norm]
    if big:
        listed = ", ".join(f"`{s.module or '(root)'}` {s.grad_norm:.2g} (x{s.ratio:.2g} its weights)"
                           for s in big[:6])
        findings.append(Finding(
            FindingKind.EXPLODING, Severity.ERROR,
            f"exploding gradients in {plural(len(big), 'layer')}, up to {max(s.grad_norm for s in big):.2g}",
            f"Gradient norms above explode_norm={explode_norm:g}: {listed}. One SGD step with "
            f"lr=1e-3 would change these weights by up to {1e-3 * max(s.ratio for s in big):.0%} "
            f"of their size.{_init_scale(model, [s.module for s in big])}",
            "Check the weight initialisation (weights much larger than the default or He/Xavier "
            "scale blow up activations and gradients), the loss scale and the learning rate; clip "
            "gradients with torch.nn.utils.clip_grad_norm_ if spikes are expected.",
            params=(), module=big[0].module,
            values=(("max_grad_norm", max(s.grad_norm for s in big)),)))
    return findings


def _init_scale(model, modules) -> str:
    """Text comparing weight scales with the usual 1/sqrt(fan_in), for too-large ones."""
    if model is None:
        return ""
    parts = []
    for path in modules:
        weight = getattr(model.get_submodule(path), "weight", None) if path else None
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            continue
        fan_in = weight[0].numel()
        std, usual = float(weight.detach().float().std()), fan_in ** -0.5
        if std > 4 * usual:
            parts.append(f"`{path}` {std:.3g} ({std / usual:.0f}x 1/sqrt(fan_in) = {usual:.2g})")
    return (" Weight std far above the usual initialisation scale: " + ", ".join(parts[:4])
            + ".") if parts else ""


def _chain(layers: list[LayerStats], factor: float, scaled=frozenset()):
    """``(weak, strong)``: a layer whose grad norm is below ``factor`` times a later layer's
    (layers in ``scaled`` are not used as the later layer)."""
    best = None
    strongest = None
    for s in reversed(layers):
        if strongest is not None and s.grad_norm > 0 and strongest.grad_norm > 0:
            decay = s.grad_norm / strongest.grad_norm
            if decay < factor and (best is None or decay < best[0]):
                best = (decay, s, strongest)
        if s.grad_norm > 0 and s.module not in scaled and (
                strongest is None or s.grad_norm > strongest.grad_norm):
            strongest = s
    return None if best is None else best[1:]


def _vanishing(layers, weak, chain, vanish_ratio, saturating: bool = True) -> Finding:
    def fmt(s):
        return f"`{s.module or '(root)'}` {s.grad_norm:.2g}"

    severity = Severity.ERROR
    weak_text = (f" {plural(len(weak), 'layer')} {'has a gradient' if len(weak) == 1 else 'have gradients'} below vanish_ratio={vanish_ratio:g} of "
                 f"their weights (they effectively do not train): "
                 + ", ".join(f"`{s.module}` {s.ratio:.2g}" for s in weak[:6])
                 + (f" and {len(weak) - 6} more" if len(weak) > 6 else "") + ".") if weak else ""
    if chain is not None:
        lo, hi = chain
        i, j = layers.index(lo), layers.index(hi)
        span = layers[i:j + 1]
        shown = span if len(span) <= 7 else span[:3] + span[-3:]
        trail = " -> ".join(fmt(s) for s in reversed(shown[-3:] if len(span) > 7 else shown))
        if len(span) > 7:
            trail += " -> ... -> " + " -> ".join(fmt(s) for s in reversed(shown[:3]))
        factor = hi.grad_norm / lo.grad_norm
        title = (f"vanishing gradients: the gradient norm shrinks {factor:.1g}x over {len(span)} "
                 f"layers, from `{hi.module}` back to `{lo.module}`")
        message = (f"Going backward from `{hi.module}` to `{lo.module}` the gradient norm falls by "
                   f"{math.log10(factor):.0f} orders of magnitude ({trail}).{weak_text}")
        modules = (lo.module, hi.module)
    else:
        title = f"vanishing gradients in {plural(len(weak), 'layer')}"
        message = weak_text.strip()
        modules = (weak[0].module,)
    if saturating:
        hint = ("Saturating activations (sigmoid/tanh) in a deep stack multiply the gradient by "
                "< 0.25 per layer: use ReLU/GELU, normalisation (BatchNorm/LayerNorm), residual "
                "connections or a better initialisation; check for a tiny loss scale.")
    else:
        hint = ("Check the initialisation of the layers in between (weights far below the "
                "He/Xavier scale shrink the gradient at every layer), add normalisation "
                "(BatchNorm/LayerNorm) or residual connections, and check for a tiny loss scale "
                "or a multiplication by a very small constant.")
    return Finding(FindingKind.VANISHING, severity, title, message, hint, module=modules[0],
                   values=(("min_ratio", min((s.ratio for s in layers), default=0.0)),))


def activation_findings(watch, idmap: dict, model: torch.nn.Module, dead_fraction: float,
                        saturated_fraction: float) -> list[Finding]:
    """Dead ReLU units and saturated sigmoid/tanh units, per call site."""
    out = []
    for act in watch.activations.values():
        if act.mask is None or not act.units:
            continue
        k = int(act.mask.sum())
        frac = k / act.units
        limit = dead_fraction if act.kind == "relu" else saturated_fraction
        if frac < limit or k == 0:
            continue
        if frac < 1.0 and act.samples < 4:
            continue            # too few values per unit to tell dead from chance
        where = _where(act.module, act.source)
        feeder = _feeder(act.node, model)
        if act.kind == "relu":
            kind, what = FindingKind.DEAD_UNITS, "output zero for every example in the batch"
            hint = ("A large negative bias, a bad initialisation or a too-high learning rate pushes "
                    "units into ReLU's flat region for good; check the bias/weights of the layer "
                    "feeding it, lower the learning rate, or use LeakyReLU/GELU.")
        else:
            kind = FindingKind.SATURATED_UNITS
            what = ("stay within 1e-3 of 0 or 1" if act.kind == "sigmoid" else "stay within 1e-3 of "
                    "-1 or 1") + " for every example (their local gradient is below 1e-3)"
            hint = ("Inputs to the activation are too large: check the scale of the layer feeding "
                    "it (initialisation, missing normalisation) and the learning rate.")
        message = (f"{k} of {act.units} units ({frac:.0%}) after `{act.op}`{where} {what}, so "
                   f"{'no' if frac >= 1.0 else 'almost no'} gradient flows back through them."
                   f"{feeder}")
        severity = Severity.ERROR if frac >= 1.0 and act.units > 1 else Severity.WARNING
        out.append(Finding(kind, severity, f"{frac:.0%} of units after `{act.op}`{where} are "
                           f"{'dead' if act.kind == 'relu' else 'saturated'}", message, hint,
                           nodes=tuple(i for i in [idmap.get(act.node)] if i), module=act.module,
                           source=act.source, op=act.op,
                           values=(("fraction", frac), ("units", float(act.units)))))
    return out


def _feeder(node, model) -> str:
    """Text naming the layer that feeds an activation, with its bias statistics."""
    if node is None:
        return ""
    prev = [n for n, _ in node.next_functions if n is not None]
    if not prev:
        return ""
    module, source = tag(prev[0])
    if not module:
        return ""
    text = f" Its input comes from `{module}` ({prev[0].name()}{' at ' + source if source else ''})"
    try:
        bias = getattr(model.get_submodule(module), "bias", None)
    except AttributeError:
        bias = None
    if isinstance(bias, torch.Tensor) and bias.numel():
        b = bias.detach().float()
        text += f", whose bias has mean {float(b.mean()):.3g} (min {float(b.min()):.3g})"
    return text + "."
