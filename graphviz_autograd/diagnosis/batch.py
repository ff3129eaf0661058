"""Batch mixing: a ``view``/``reshape``/``flatten`` whose ``-1`` absorbed part of the batch.

The seed's LeNet flattens with ``x.view(-1, 16*5*5)``. On 28x28 images the map is
16x4x4 = 256 values per example, so at batch 100 ``view`` silently turns
(100, 16, 4, 4) into (64, 400): rows of 400 values cut across examples, 100
examples become 64 rows, and nothing fails until (maybe) the loss compares 64
predictions with 100 labels. :class:`~.watch.ForwardWatch` records such reshapes
(:class:`~.watch.BatchMix`); this module explains them.

Example (what a finding reads like):
    ``view at seed.py:15 mixes the examples of the batch: (100, 16, 4, 4) -> (64, 400)``
"""
from __future__ import annotations

import math

import torch

from graphviz_autograd.diagnosis.findings import Finding, FindingKind, Severity


def _expr(shape) -> str:
    """``(16, 4, 4)`` -> ``"16*4*4"``."""
    return "*".join(str(int(d)) for d in shape)


def mixing_findings(watch, idmap: dict, model: torch.nn.Module) -> list[Finding]:
    """One error per reshape that mixed examples (see the module docstring)."""
    if watch is None:
        return []
    return [_finding(mix, idmap, model) for mix in watch.mixes]


def _finding(mix, idmap: dict, model: torch.nn.Module) -> Finding:
    before, after, n = mix.before, mix.after, mix.batch
    per_example = math.prod(before[1:])
    per_row = math.prod(after[1:])
    where = f" at {mix.source}" if mix.source else ""
    owner = f"module `{mix.module}`" if mix.module else f"the forward of {type(model).__name__}"
    message = (f"The input is a batch of {n} examples, here of {per_example} = "
               f"{_expr(before[1:])} values each. `{mix.op}`{where} (in {owner}) turns {before} "
               f"into {after}: each row of {per_row} values spans parts of different examples "
               f"(a new example starts every {per_example} values), so {n} examples became "
               f"{after[0]} mixed rows. Nothing fails at this line: the layers after it train on "
               f"mixed-up examples, and the loss compares {after[0]} predictions with {n} "
               "targets (an error), or, where the counts happen to fit, with the wrong labels. "
               "Other batch sizes may fail at this line instead.")
    hint = (f"Keep the batch dimension: x = x.flatten(1) or x = x.view(x.size(0), -1), "
            f"which gives {(n, per_example)}.")
    layer = _consumer(model, mix, per_row)
    if layer is not None:
        name, linear = layer
        hint += (f" Then `{name}` = nn.Linear({linear.in_features}, {linear.out_features}) needs "
                 f"in_features={per_example}: nn.Linear({per_example}, {linear.out_features})"
                 f"{_design_note(before, linear.in_features)}.")
    else:
        hint += f" The next layer then gets {per_example} features per example."
    title = (f"`{mix.op}`{where} mixes the examples of the batch: {before} -> {after}")
    return Finding(FindingKind.BATCH_MIXING, Severity.ERROR, title, message, hint,
                   nodes=tuple(i for i in [idmap.get(mix.node)] if i), module=mix.module,
                   source=mix.source, op=mix.op,
                   values=(("batch", float(n)), ("rows", float(after[0])),
                           ("per_example", float(per_example)), ("per_row", float(per_row))))


def _consumer(model, mix, per_row: int):
    """``(path, nn.Linear)`` of the layer the reshape feeds (or the one built for ``per_row``)."""
    modules = dict(model.named_modules())
    found = modules.get(mix.consumer) if mix.consumer else None
    if isinstance(found, torch.nn.Linear):
        return mix.consumer, found
    for path, m in modules.items():
        if isinstance(m, torch.nn.Linear) and m.in_features == per_row:
            return path, m
    return None


def _design_note(before: tuple, in_features: int) -> str:
    """`` (= 16*4*4; 400 = 16*5*5 fits 5x5 feature maps)`` for an (N, C, H, W) map."""
    if len(before) != 4 or not before[1] or in_features % before[1]:
        return f" (= {_expr(before[1:])})"
    side = math.isqrt(in_features // before[1])
    if side * side != in_features // before[1] or (side, side) == tuple(before[2:]):
        return f" (= {_expr(before[1:])})"
    return (f" (= {_expr(before[1:])}; {in_features} = {before[1]}*{side}*{side} fits "
            f"{side}x{side} feature maps, i.e. larger input images than these)")
