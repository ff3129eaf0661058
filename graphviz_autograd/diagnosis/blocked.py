"""Findings for parameters whose gradient is zero (or tiny) everywhere, and why.

:mod:`.scales` says which parameters are cut off the loss and by what; this
module words it (no torch: a recorded run uses it too):

* behind a scale that starts at zero inside a residual branch (``zero_init_residual``,
  layer scale 1e-6): by design, an ``info`` note;
* behind such a scale with no way around it (a zero-initialised head): a ``warning``,
  the layers before it wait until the scale moves;
* a gradient exactly zero everywhere with no such explanation: an ``error``
  (``zero_gradient``), since an all-zero gradient is no gradient.

Dead ReLUs are explained by the ``dead_units`` finding itself.

Example:
    >>> [f.severity.value for f in zero_findings({"fc.weight"}, {})]
    ['error']
"""
from __future__ import annotations

import dataclasses

from graphviz_autograd.diagnosis.findings import (Finding, FindingKind, LayerStats, Severity,
                                                  plural)
from graphviz_autograd.diagnosis.scales import NEAR_ZERO


def _names(names, limit: int = 6) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _modules(params) -> list[str]:
    return list(dict.fromkeys(p.rpartition(".")[0] or "(root)" for p in params))


def gate_findings(explained: dict, gates: dict[str, str], absmax: dict[str, float],
                  gate_grads: dict[str, float], order=None) -> list[Finding]:
    """The info note (residual branches) and the warning (no way around) about zero scales.

    ``order``: ``{parameter: position}`` to list parameters in (default: as found).
    """
    rank = order or {}
    explained = dict(sorted(explained.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    out = []
    for reason in ("branch", "gate"):
        params = [p for p, (r, found) in explained.items() if r == reason
                  and any(absmax.get(gates[b], 1.0) <= NEAR_ZERO for b in found)]
        if not params:
            continue
        scales = list(dict.fromkeys(gates[b] for p in params for b in explained[p][1]))
        scale_text = ", ".join(f"`{s}` (max |value| {absmax.get(s, 0.0):.2g}, its own "
                               f"|grad| {gate_grads.get(s, 0.0):.2g})" for s in scales[:4])
        scale_text += f" and {len(scales) - 4} more" if len(scales) > 4 else ""
        layers = _modules(params)
        if reason == "branch":
            title = (f"{plural(len(layers), 'layer')} in residual branches start with a zero or tiny "
                     "gradient, by design: each branch ends in a scale that starts at (nearly) zero")
            message = (f"{_names(layers)} reach the loss only through {plural(len(scales), 'scale')} "
                       f"that start at (nearly) zero: {scale_text}. This is how "
                       "zero_init_residual=True (torchvision, timm) and layer scale (ConvNeXt) start "
                       "a residual network as a shallower one: the skip connection carries the "
                       "gradient to the layers before each branch, and the scales get gradients of "
                       "their own, so the branches start learning after the first update. Not a "
                       "vanishing gradient.")
            hint = ("Nothing to fix. If a branch should learn from the first step, initialise its "
                    "last normalisation scale to 1 (zero_init_residual=False) or use a larger "
                    "layer-scale init.")
            severity, kind = Severity.INFO, FindingKind.VANISHING
        else:
            title = (f"{plural(len(params), 'parameter')} get no gradient until "
                     f"{_names(scales, 2)} move{'s' if len(scales) == 1 else ''} away from zero")
            message = (f"Every path from {_names(params)} to the loss is multiplied by "
                       f"{scale_text}, so their gradient is zero (or tiny) at this step. The "
                       "scales get a gradient of their own, so these layers start learning once "
                       "an update has moved them; there is no skip connection around them.")
            hint = ("If this is not a deliberate zero initialisation, initialise these scales "
                    "like the other weights (e.g. nn.init.ones_ for a norm scale, the default "
                    "init for a Linear/Conv weight).")
            severity, kind = Severity.WARNING, FindingKind.ZERO_GRADIENT
        out.append(Finding(kind, severity, title, message, hint, params=tuple(params),
                           module=layers[0] if layers[0] != "(root)" else "",
                           values=(("layers", float(len(layers))), ("scales", float(len(scales))))))
    return out


def zero_findings(zero: set[str], explained: dict) -> list[Finding]:
    """One error for the parameters whose gradient is exactly zero everywhere, unexplained."""
    params = sorted(p for p in zero if explained.get(p, ("",))[0] not in ("dead", "branch", "gate"))
    if not params:
        return []
    stuck = [p for p in params if explained.get(p, ("",))[0] == "stuck"]
    message = (f"The gradient of {_names(params)} is exactly 0 for every element: autograd "
               "reaches them, but nothing of the loss flows back, so an optimizer step does "
               "not change them (except weight decay).")
    if stuck:
        message += (f" {_names(stuck)} sit behind a scale that is zero and gets no gradient "
                    "itself, so they never start learning.")
    hint = ("Look for a multiplication by zero on their way to the loss (a mask that is all "
            "zero, a scale or weight initialised to 0, x * 0, a clamp or step function whose "
            "gradient is 0 everywhere), or a loss term that does not depend on them.")
    title = (f"`{params[0]}` gets a gradient that is exactly zero everywhere" if len(params) == 1
             else f"{len(params)} parameters get gradients that are exactly zero everywhere")
    return [Finding(FindingKind.ZERO_GRADIENT, Severity.ERROR, title, message, hint,
                    params=tuple(params), module=_modules(params)[0].replace("(root)", ""))]


def compensate(layers: list[LayerStats], module_params: dict[str, list[str]],
               scale_of) -> tuple[list[LayerStats], set[str], set[str]]:
    """Layer statistics as they would be without the gates' small scales, for the vanishing check.

    A layer whose every parameter reaches the loss only through scales whose product is at
    most ``s`` (``scale_of(parameter)``, see :meth:`.scales.Blocking.scale`) gets a gradient
    about ``s`` times smaller than without them; that is the scales' doing (they learn), not
    the gradient vanishing. Returns ``(layers with such gradient norms divided by s, modules
    whose scale is 0 (left out), modules divided)``.
    """
    out, skip, scaled = [], set(), set()
    for stats in layers:
        values = [scale_of(p) for p in module_params.get(stats.module, ())]
        scale = max(values, default=1.0)
        if scale >= 1.0:
            out.append(stats)
        elif scale <= 0:
            skip.add(stats.module)
        else:
            out.append(dataclasses.replace(stats, grad_norm=stats.grad_norm / scale))
            scaled.add(stats.module)
    return out, skip, scaled
