"""A recorded step's statistics, as rows for the store: ``{kind: [(key, values in STATS order)]}``.

Every gradient and activation of the step was reduced to a small row when it was seen
(``stats.py``); here they are read back at once (one device sync per step), combined per
node, parameter and module, sharded parameters across ranks (``shards.py``), and put in
the store's column order.
"""
from __future__ import annotations

import itertools
import math

from graphviz_autograd.record import shards, stats

# A store row: GRAD_STATS, param_norm and update_ratio, ACT_STATS (store.STATS, in its order)
ROW_STATS = stats.GRAD_STATS + ("param_norm", "update_ratio") + stats.ACT_STATS
_NO_GRAD = (None,) * len(stats.GRAD_STATS)
_NO_PARAM = (None, None)
_NO_ACT = (None,) * len(stats.ACT_STATS)


class ParamSet:
    """The trainable parameters the recorder reads: names, local plain data (a DTensor's
    shard), which are sharded, and the update-norm buffers."""

    def __init__(self, named: list, local: list, sharded: list):
        self.named, self.local, self.sharded = named, local, sharded
        self.updates = stats.UpdateNorms(local)     # ||w_after - w_before|| of the local data


def step_rows(capture, slot_ids: dict[int, str], params: ParamSet | None, update_norms,
              grad_scale: float = 1.0, param_grad_scale: float = 1.0) -> dict:
    """The rows of one step.

    Args:
        capture: the step's :class:`~graphviz_autograd.record.capture.Capture`.
        slot_ids: capture slot -> node id in the step's graph.
        params: the parameters (None: parameter statistics are not recorded).
        update_norms: ``||w_before - w_after||^2`` per parameter from the optimizer hooks, or None.
        grad_scale: a GradScaler's scale during this step's backward: node gradients are
            divided by it.
        param_grad_scale: the same for parameter gradients (1 once ``scaler.step`` unscaled them).
    """
    rows, spans = [], []        # spans: (kind, key, first row, gradient rows, activation rows)
    slots, node_acts = capture.slots, capture.node_acts
    for slot, node_id in slot_ids.items():
        grads, act = slots[slot], node_acts.get(slot)
        if grads or act is not None:
            spans.append(("node", node_id, len(rows), len(grads) if grads else 0, act is not None))
            if grads:
                rows.extend(grads)
            if act is not None:
                rows.append(act)
    first_param = len(rows)
    tensors = [p for _, p in params.named] if params is not None else []
    rows.extend(stats.grad_row(p.grad) for p in tensors)     # a DTensor's: its local shard
    for name, group in capture.acts.items():
        spans.append(("module", name, len(rows), 0, len(group)))
        rows.extend(group)
    sq = None
    if tensors:     # measured right after optimizer.step() when the update was (one pass for both)
        sq = params.updates.after_sq if update_norms is not None else None
        # else device norms filled by the read_rows below: one read-back per step
        sq = sq or stats.sq_norms(params.local, params.updates.params, pending=True)
    rows = stats.read_rows(rows)
    out: dict[str, list] = {"node": [], "param": [], "module": []}
    for kind, key, first, n_grads, n_acts in spans:
        grads = stats.grad_values(rows[first:first + n_grads]) if n_grads else None
        if grads is not None and kind == "node" and grad_scale != 1.0:
            grads = _unscaled(grads, grad_scale)
        acts = stats.act_values(rows[first + n_grads:first + n_grads + n_acts]) if n_acts else None
        out[kind].append((key, (grads or _NO_GRAD) + _NO_PARAM + (acts or _NO_ACT)))
    if tensors:
        out["param"] = _param_entries(params, rows[first_param:first_param + len(tensors)],
                                      update_norms, param_grad_scale, sq)
    return {kind: entries for kind, entries in out.items() if entries}


def _param_entries(params: ParamSet, param_rows: list, updates, scale: float, sq: list) -> list:
    if params.sharded:          # FSDP: full-parameter statistics from the shards'
        sq, updates = list(sq), list(updates) if updates is not None else None
        shards.combine(param_rows, sq, updates, params.sharded)
    sqrt, grad_values, entries = math.sqrt, stats.grad_values, []
    for (name, _), row, norm_sq, update_sq in zip(params.named, param_rows, sq,
                                                  updates or itertools.repeat(None)):
        norm = sqrt(norm_sq)
        ratio = None if update_sq is None else (sqrt(update_sq) / norm if norm > 0 else math.nan)
        grads = grad_values((row,))
        if grads is not None and scale != 1.0:
            grads = _unscaled(grads, scale)
        entries.append((name, (grads or _NO_GRAD) + (norm, ratio) + _NO_ACT))
    return entries


def _unscaled(grads: tuple, scale: float) -> tuple:
    norm, mean, std, absmax, zero_frac, nan, inf = grads
    return (norm / scale, mean / scale, std / scale, absmax / scale, zero_frac, nan, inf)
