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

import math
from graphviz_autograd.diagnosis.findings import Finding, FindingKind, Severity
from graphviz_autograd.graph.model import NodeKind


def _finding(kind: FindingKind, severity: Severity, message: str, nodes=(), **fields) -> Finding:
    """A finding read from a run: its one-line message is also its title."""
    return Finding(kind=kind, severity=severity, title=message, message=message,
                   nodes=tuple(nodes), **fields)


def run_findings(run, step: int, *, vanish_ratio: float = 1e-7, explode_norm: float = 1e3,
                 dead_fraction: float = 0.99, saturated_fraction: float = 0.9) -> list[Finding]:
    """What looks wrong at ``step`` of ``run`` (a ``Run`` or ``RankReader``)."""
    out: list[Finding] = []
    graph = run.graph_at(step)
    loss = run.scalar_at("loss", step)
    if loss is not None and not math.isfinite(loss):
        out.append(_finding(FindingKind.NONFINITE_LOSS, Severity.ERROR, f"the loss is {loss} at step {step}"))
    params = run.stats_table_at(step, "param", ("grad_norm", "param_norm"))   # one query per kind
    if params["grad_norm"] or params["param_norm"]:
        out.extend(_param_findings(step, params["grad_norm"], params["param_norm"], vanish_ratio,
                                   explode_norm))
    if graph is not None:
        nodes = run.stats_table_at(step, "node", ("grad_nan", "grad_inf", "act_zero_frac", "act_sat_frac"))
        out.extend(_node_findings(step, graph, nodes, dead_fraction, saturated_fraction))
    return out


def _param_findings(step, grads, norms, vanish_ratio, explode_norm):
    missing = sorted(k for k in norms if k not in grads)
    if missing:
        yield _finding(FindingKind.UNUSED_PARAMETER, Severity.ERROR,
                         f"{len(missing)} parameter(s) got no gradient at step {step}: "
                         f"{', '.join(missing[:6])}{'...' if len(missing) > 6 else ''}; they have no path "
                         "to the loss (run `graphviz-autograd doctor` or ga.diagnose to see where it breaks)",
                         tuple(f"param:{k}" for k in missing))
    bad = sorted(k for k, v in grads.items() if not math.isfinite(v))
    if bad:
        yield _finding(FindingKind.NONFINITE_GRADIENT, Severity.ERROR,
                         f"non-finite gradient in {', '.join(bad[:6])} at step {step}",
                         tuple(f"param:{k}" for k in bad))
    tiny = sorted(k for k, g in grads.items() if math.isfinite(g) and norms.get(k, 0) > 0
                  and g / norms[k] < vanish_ratio)
    if tiny:
        yield _finding(FindingKind.VANISHING, Severity.WARNING,
                         f"{len(tiny)} parameter(s) get gradients below {vanish_ratio:g} of their norm at "
                         f"step {step}: {', '.join(tiny[:6])}", tuple(f"param:{k}" for k in tiny))
    huge = sorted(k for k, g in grads.items() if math.isfinite(g) and g > explode_norm)
    if huge:
        yield _finding(FindingKind.EXPLODING, Severity.WARNING,
                         f"gradient norm above {explode_norm:g} at step {step}: "
                         + ", ".join(f"{k} ({grads[k]:.3g})" for k in huge[:6]), tuple(f"param:{k}" for k in huge))


def _node_findings(step, graph, tables, dead_fraction, saturated_fraction):
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
            yield _finding(FindingKind.DEAD_UNITS, Severity.WARNING,
                             f"{100 * frac:.1f}% of the outputs of {n.op} ({n.module or 'root'}"
                             f"{', ' + n.source if n.source else ''}) are exactly zero at step {step}: "
                             "dead ReLUs (check the bias and the learning rate)", (node_id,))
    sat = tables["act_sat_frac"]
    for node_id, frac in sorted(sat.items()):
        if node_id in graph and frac >= saturated_fraction:
            n = graph.node(node_id)
            yield _finding(FindingKind.SATURATED_UNITS, Severity.WARNING,
                             f"{100 * frac:.1f}% of the outputs of {n.op} ({n.module or 'root'}) are saturated "
                             f"at step {step}: its gradient is close to zero there", (node_id,))
