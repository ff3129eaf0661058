"""Findings read from a recorded run at one step (no torch: the dashboard uses it).

:func:`graphviz_autograd.diagnose` explains a live model; this module answers the
same questions from what the :class:`~graphviz_autograd.Recorder` stored, so a
run can be checked after the fact, in another process, without torch.

Example:
    >>> from graphviz_autograd import open_run
    >>> findings = run_findings(open_run("runs/lenet"), step=100)   # doctest: +SKIP
    >>> [f.kind for f in findings]                                   # doctest: +SKIP
    ['dead_units']
"""
from __future__ import annotations

import dataclasses
import math

from graphviz_autograd.diagnosis import blocked, scales
from graphviz_autograd.diagnosis.findings import Finding, FindingKind, Severity, plural
from graphviz_autograd.graph.model import NodeKind


def _finding(kind: FindingKind, severity: Severity, message: str, nodes=(), **fields) -> Finding:
    """A finding read from a run: its one-line message is also its title."""
    return Finding(kind=kind, severity=severity, title=message, message=message,
                   nodes=tuple(nodes), **fields)


def run_findings(run, step: int, *, vanish_ratio: float = 1e-7, explode_norm: float = 1e3,
                 dead_fraction: float = 0.99, saturated_fraction: float = 0.9) -> list[Finding]:
    """What looks wrong at ``step`` of ``run`` (a ``Run`` or ``RankReader``).

    Severities follow :func:`graphviz_autograd.diagnose`: a parameter without gradient,
    an exactly-zero gradient, all outputs of a ReLU zero, NaN/Inf, vanishing and exploding
    gradients are errors; mostly dead or saturated units are warnings; a residual branch
    whose scale starts at zero is an info note.
    """
    out: list[Finding] = []
    graph = run.graph_at(step)
    loss = run.scalar_at("loss", step)
    if loss is not None and not math.isfinite(loss):
        out.append(_finding(FindingKind.NONFINITE_LOSS, Severity.ERROR, f"the loss is {loss} at step {step}"))
    params = run.stats_table_at(step, "param", ("grad_norm", "param_norm"))   # one query per kind
    nodes = {"grad_nan": {}, "grad_inf": {}, "act_zero_frac": {}, "act_sat_frac": {}}
    if graph is not None:
        nodes = run.stats_table_at(step, "node", tuple(nodes))
    grads, norms = params["grad_norm"], params["param_norm"]
    dead = _dead_nodes(graph, nodes["act_zero_frac"]) if graph is not None else {}
    explained, gates = {}, {}
    if graph is not None and grads:
        gates = scales.find_gates(graph, norms)      # a norm bounds every value
        blocking = scales.Blocking(graph, {**{op: norms[p] for op, p in gates.items()},
                                           **{n: 0.0 for n in dead}})
        zero = {k for k, v in grads.items() if v == 0.0}
        explained = scales.explain(blocking, gates, grads, zero)
        out.extend(_with_step(f, step) for f in blocked.gate_findings(explained, gates, norms, grads))
        out.extend(_with_step(f, step) for f in blocked.zero_findings(zero, explained))
    if grads or norms:
        out.extend(_param_findings(step, grads, norms, vanish_ratio, explode_norm,
                                   blocking.scale if graph is not None and grads else None))
    if graph is not None:
        out.extend(_node_findings(step, graph, nodes, dead_fraction, saturated_fraction,
                                  explained))
    return out


def _with_step(f: Finding, step: int) -> Finding:
    """The finding at ``step``; its parameters' nodes are marked unless it is only a note
    (the dashboard marks every finding's nodes on the graph)."""
    nodes = () if f.severity is Severity.INFO else tuple(f"param:{p}" for p in f.params)
    return dataclasses.replace(f, title=f"{f.title} (step {step})", nodes=nodes)


def _dead_nodes(graph, zero_frac: dict[str, float]) -> dict[str, float]:
    """ReLU nodes all of whose outputs were zero (they pass no gradient)."""
    return {n: v for n, v in zero_frac.items() if v >= 1.0 and n in graph
            and "Relu" in graph.node(n).op}


def _param_findings(step, grads, norms, vanish_ratio, explode_norm, scale_of):
    missing = sorted(k for k in norms if k not in grads)
    if missing:
        yield _finding(FindingKind.UNUSED_PARAMETER, Severity.ERROR,
                       f"{plural(len(missing), 'parameter')} got no gradient at step {step}: "
                       f"{', '.join(missing[:6])}{'...' if len(missing) > 6 else ''}; they have no path "
                       "to the loss (run `graphviz-autograd doctor` or ga.diagnose to see where it breaks)",
                       tuple(f"param:{k}" for k in missing), params=tuple(missing))
    bad = sorted(k for k, v in grads.items() if not math.isfinite(v))
    if bad:
        yield _finding(FindingKind.NONFINITE_GRADIENT, Severity.ERROR,
                       f"non-finite gradient in {', '.join(bad[:6])} at step {step}",
                       tuple(f"param:{k}" for k in bad), params=tuple(bad))
    tiny = []
    for k, g in grads.items():
        if not math.isfinite(g) or g == 0.0 or norms.get(k, 0) <= 0:
            continue            # exactly zero: the zero_gradient finding says why
        scale = scale_of(k) if scale_of is not None else 1.0
        if scale <= 0.0:
            continue          # cut off by dead ReLUs: that finding says so
        if g / norms[k] / min(scale, 1.0) < vanish_ratio:
            tiny.append(k)
    tiny.sort()
    if tiny:
        yield _finding(FindingKind.VANISHING, Severity.ERROR,
                       f"{plural(len(tiny), 'parameter')} get gradients below {vanish_ratio:g} of "
                       f"their norm at step {step} (they effectively do not train): "
                       f"{', '.join(tiny[:6])}", tuple(f"param:{k}" for k in tiny),
                       params=tuple(tiny))
    huge = sorted(k for k, g in grads.items() if math.isfinite(g) and g > explode_norm)
    if huge:
        yield _finding(FindingKind.EXPLODING, Severity.ERROR,
                       f"gradient norm above {explode_norm:g} at step {step}: "
                       + ", ".join(f"{k} ({grads[k]:.3g})" for k in huge[:6]),
                       tuple(f"param:{k}" for k in huge), params=tuple(huge))


def _node_findings(step, graph, tables, dead_fraction, saturated_fraction, explained):
    nans, infs = tables["grad_nan"], tables["grad_inf"]
    nonfinite = [n for n in graph.nodes if n.kind is NodeKind.OP and (nans.get(n.id) or infs.get(n.id))]
    if nonfinite:
        first = max(nonfinite, key=lambda n: n.seq)      # backward runs from the last-created node
        users = [graph.node(d) for d in graph.successors(first.id)]
        culprit = ", ".join(f"{u.op} ({u.module or 'root'}{', ' + u.source if u.source else ''})"
                            for u in users if u.kind is NodeKind.OP) or "the loss"
        yield _finding(FindingKind.NONFINITE_GRADIENT, Severity.ERROR,
                       f"the gradient first turns NaN/Inf in backward at the output of {first.op} "
                       f"({first.id}{', ' + first.source if first.source else ''}): it was made by the "
                       f"backward of {culprit}", (first.id, *(u.id for u in users)))
    dead = tables["act_zero_frac"]
    for node_id, frac in sorted(dead.items()):
        if node_id in graph and "Relu" in graph.node(node_id).op and frac >= dead_fraction:
            n = graph.node(node_id)
            starved = tuple(p for p, (reason, found) in explained.items()
                            if reason == "dead" and node_id in found)
            text = (f"; {', '.join(starved[:6])} get{'s' if len(starved) == 1 else ''} no "
                    "gradient through it" if starved else "")
            yield _finding(FindingKind.DEAD_UNITS, Severity.ERROR if frac >= 1.0 else Severity.WARNING,
                           f"{100 * frac:.1f}% of the outputs of {n.op} ({n.module or 'root'}"
                           f"{', ' + n.source if n.source else ''}) are exactly zero at step {step}: "
                           f"dead ReLUs (check the bias and the learning rate){text}",
                           (node_id, *(f"param:{p}" for p in starved)), params=starved)
    sat = tables["act_sat_frac"]
    for node_id, frac in sorted(sat.items()):
        if node_id in graph and frac >= saturated_fraction:
            n = graph.node(node_id)
            yield _finding(FindingKind.SATURATED_UNITS, Severity.WARNING,
                           f"{100 * frac:.1f}% of the outputs of {n.op} ({n.module or 'root'}) are saturated "
                           f"at step {step}: its gradient is close to zero there", (node_id,))
