"""Incidents: the step where training breaks, caught while it happens, at near-zero cost.

Every ``log()`` checks what is already in hand: the loss and metrics (a non-finite value,
or a loss far above its recent median: a *spike*) and, on recorded steps, the parameter
gradients (non-finite, or a global norm many times its recent median: an *explosion*).
A trigger opens an incident: the step's parameter statistics are recorded even off the
``every`` cadence, and the next steps are captured in detail (every node's gradient,
activations, and a forward watch that names the first op producing a non-finite value).
A few detailed steps per incident, then a cool-down: a diverged run is not traced forever.

Example:
    >>> watch = IncidentWatch(IncidentOptions())
    >>> [t.kind for t in watch.check_scalars(0, {"loss": float("nan")})]
    ['nonfinite']
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

KINDS = ("nonfinite", "spike", "explosion")
ACTIONS = ("record", "raise")
_PRIORITY = ("nonfinite", "explosion", "spike")


@dataclass(frozen=True)
class IncidentOptions:
    """How incidents are detected and followed.

    Attributes:
        spike_k: a loss is a spike above ``median + spike_k * 1.4826 * MAD`` of the window
            (and above ``spike_ratio`` times the median).
        spike_window: how many recent losses the median and MAD are taken over.
        spike_ratio: the spike must also exceed the median by this factor (quiet on a loss
            that has flattened out, whose MAD is tiny).
        min_history: losses needed before spikes are looked for.
        explosion_factor: the global gradient norm of a recorded step above this many times
            the median of the last ``explosion_window`` recorded steps is an explosion.
        explosion_window: recorded steps the gradient-norm median is taken over.
        detail_steps: steps captured in detail after a trigger (node statistics, activations,
            the forward watch).
        cooldown: steps after an incident during which no new one of the same kind opens.
    """

    spike_k: float = 8.0
    spike_window: int = 50
    spike_ratio: float = 2.0
    min_history: int = 20
    explosion_factor: float = 10.0
    explosion_window: int = 10
    detail_steps: int = 2
    cooldown: int = 100


@dataclass
class Trigger:
    """What set an incident off at one step."""

    kind: str
    summary: str
    values: dict


@dataclass
class OpenIncident:
    """An incident being followed: its id, trigger step, and what the detail steps added."""

    id: int
    step: int
    kind: str
    summary: str
    values: dict
    nodes: list = field(default_factory=list)
    detail_steps: list = field(default_factory=list)
    origin: dict | None = None
    remaining: int = 0

    def data(self) -> dict:
        return {"values": self.values, "nodes": self.nodes, "detail_steps": self.detail_steps,
                "origin": self.origin}


class IncidentWatch:
    """The checks of every ``log()``; plain Python on floats the recorder already has."""

    def __init__(self, options: IncidentOptions):
        self.options = options
        self.losses: deque[float] = deque(maxlen=options.spike_window)
        self.norms: deque[float] = deque(maxlen=options.explosion_window)
        self.quiet_until: dict[str, int] = {}

    def check_scalars(self, step: int, scalars: dict[str, float]) -> list[Trigger]:
        """Non-finite loss or metrics, and loss spikes."""
        out = []
        bad = {k: v for k, v in scalars.items() if v is not None and not math.isfinite(v)}
        if bad:
            names = ", ".join(f"{k} = {v}" for k, v in bad.items())
            out.append(Trigger("nonfinite", f"{names} at step {step}", bad))
        loss = scalars.get("loss")
        if loss is not None and math.isfinite(loss):
            spike = self._spike(loss)
            if spike is not None:
                median, bound = spike
                out.append(Trigger("spike", f"loss {loss:.4g} at step {step} is a spike: the median "
                                            f"of the last {len(self.losses)} steps is {median:.4g} "
                                            f"(bound {bound:.4g})",
                                   {"loss": loss, "median": median, "bound": bound}))
            self.losses.append(loss)
        return [t for t in out if self._open(t.kind, step)]

    def _spike(self, loss: float):
        o = self.options
        if len(self.losses) < o.min_history:
            return None
        median = statistics.median(self.losses)
        mad = statistics.median(abs(x - median) for x in self.losses)
        bound = median + o.spike_k * 1.4826 * mad
        if loss > bound and loss > o.spike_ratio * median:
            return median, bound
        return None

    def check_gradients(self, step: int, params: list, cadence: bool = True) -> list[Trigger]:
        """Non-finite parameter gradients and (on the recording cadence only, where the window
        of norms comes from) gradient-norm explosions, from a step's parameter rows
        ``[(name, values in STATS order)]``."""
        out = []
        nonfinite = [name for name, v in params if (v[5] or 0) > 0 or (v[6] or 0) > 0]
        if nonfinite:
            shown = ", ".join(nonfinite[:5]) + (" ..." if len(nonfinite) > 5 else "")
            out.append(Trigger("nonfinite", f"non-finite gradient in {len(nonfinite)} parameter(s) at "
                                            f"step {step}: {shown}", {"parameters": nonfinite[:20]}))
        norms = [v[0] for _, v in params if v[0] is not None]
        total = math.sqrt(sum(n * n for n in norms)) if norms else None
        if total is not None and math.isfinite(total) and cadence:
            if len(self.norms) >= 3:
                median = statistics.median(self.norms)
                if median > 0 and total > self.options.explosion_factor * median:
                    top = sorted(((v[0], name) for name, v in params if v[0] is not None), reverse=True)[:3]
                    names = ", ".join(f"{name} ({norm:.3g})" for norm, name in top)
                    out.append(Trigger("explosion", f"gradient norm {total:.4g} at step {step} is "
                                                    f"{total / median:.1f}x the recent median "
                                                    f"{median:.4g}; largest: {names}",
                                       {"grad_norm": total, "median": median}))
            self.norms.append(total)
        return [t for t in out if self._open(t.kind, step)]

    def _open(self, kind: str, step: int) -> bool:
        if step < self.quiet_until.get(kind, -1):
            return False
        self.quiet_until[kind] = step + self.options.cooldown
        return True


def check_action(on_incident) -> str | Callable:
    """``on_incident`` validated: "record", "raise" or a callable."""
    from graphviz_autograd.errors import ConfigError

    if callable(on_incident) or on_incident in ACTIONS:
        return on_incident
    raise ConfigError(f"on_incident={on_incident!r}: use 'record' (the default), 'raise', or a "
                      "function called with each incident")


class Incidents:
    """The incidents of one recorder: opens them on triggers, follows them through their
    detail steps (with the forward watch of ``diagnose``), and writes them to the store."""

    def __init__(self, options: IncidentOptions, action, writer, labels: dict[int, str]):
        self.options, self.action, self.writer, self.labels = options, action, writer, labels
        self.watch = IncidentWatch(options)
        self.open: OpenIncident | None = None
        self.count = 0
        self.forward = None         # the ForwardWatch of a detail step, while it runs

    @property
    def detailing(self) -> bool:
        """Whether the next step is captured in detail."""
        return self.open is not None and self.open.remaining > 0

    def start_forward_watch(self, current_module: Callable[[], str]) -> None:
        if self.detailing and self.forward is None:
            from graphviz_autograd.diagnosis.watch import ForwardWatch

            self.forward = ForwardWatch(self.labels, current_module, check_values=True)
            self.forward.__enter__()

    def stop_forward_watch(self):
        """The watch of the step that just ended (None when there was none)."""
        watch, self.forward = self.forward, None
        if watch is not None:
            watch.__exit__(None, None, None)
        return watch

    def after_step(self, step: int, triggers: list[Trigger], watch, node_ids: dict, graph,
                   rows: dict | None, cadence: bool = True):
        """Update incidents with ``step`` (``rows``: its statistics for the store); returns the
        finished incident when its last detail step has been taken (or at once without
        detail steps), else None."""
        param_rows = rows.get("param") if rows else None
        nodes = rows.get("node") if rows else None
        node_tables = None
        if nodes:       # STATS order: grad_nan and grad_inf are the 6th and 7th values
            node_tables = {"grad_nan": {k: v[5] for k, v in nodes if v[5]},
                           "grad_inf": {k: v[6] for k, v in nodes if v[6]}}
        if param_rows:
            triggers = triggers + self.watch.check_gradients(step, param_rows, cadence)
        triggers = sorted(triggers, key=lambda t: _PRIORITY.index(t.kind))    # the most specific first
        inc = self.open
        if inc is not None and step > inc.step:         # a detail step of the open incident
            inc.detail_steps.append(step)
            inc.remaining -= 1
            if triggers:
                inc.values.setdefault("also", []).extend(t.summary for t in triggers)
            origin = _forward_origin(watch, node_ids) or _backward_origin(graph, node_tables)
            if origin is not None and inc.origin is None:
                inc.origin = origin
                inc.summary = f"{inc.summary}; {origin['text']}"
                inc.nodes = list(dict.fromkeys(inc.nodes + origin.get("nodes", [])))
            self.writer.add_incident(inc.id, inc.step, inc.kind, inc.summary, inc.data())
            if inc.remaining <= 0:
                self.open = None
                return inc
            return None
        if triggers and inc is None:
            first = triggers[0]
            self.count += 1
            values = dict(first.values)
            if len(triggers) > 1:
                values["also"] = [t.summary for t in triggers[1:]]
            nodes = [f"param:{p}" for p in first.values.get("parameters", [])]
            inc = OpenIncident(self.count, step, first.kind, first.summary, values, nodes=nodes,
                               remaining=self.options.detail_steps)
            origin = _forward_origin(watch, node_ids) or _backward_origin(graph, node_tables)
            if origin is not None:
                inc.origin = origin
                inc.summary = f"{inc.summary}; {origin['text']}"
                inc.nodes = list(dict.fromkeys(inc.nodes + origin.get("nodes", [])))
            self.writer.add_incident(inc.id, inc.step, inc.kind, inc.summary, inc.data())
            if inc.remaining > 0:
                self.open = inc
                return None
            return inc
        return None


    def act(self, incident: OpenIncident, flush: Callable[[], None], run_dir: str) -> None:
        """What ``on_incident`` asks for, once an incident is finished."""
        from graphviz_autograd.errors import IncidentError
        from graphviz_autograd.store import Incident

        if self.action == "raise":
            flush()
            raise IncidentError(f"training stopped at step {incident.step} ({incident.kind}): "
                                f"{incident.summary}. The run is in {run_dir} "
                                f"(graphviz-autograd incidents {run_dir})")
        if callable(self.action):
            self.action(Incident(incident.step, incident.kind, incident.summary,
                                 dict(incident.values), tuple(incident.nodes),
                                 tuple(incident.detail_steps), incident.origin))


def _forward_origin(watch, node_ids: dict) -> dict | None:
    """The first op of a watched forward that produced NaN/Inf, with its module and line."""
    if watch is None or not watch.nonfinite:
        return None
    created = [r for r in watch.nonfinite if all(o[2] for o in r.operands)]    # finite in, NaN out
    if not created:
        r = watch.nonfinite[0]
        carried = [o[0] for o in r.operands if not o[2]]
        where = f" at {r.source}" if r.source else ""
        return {"text": f"`{r.op}`{where} already received non-finite values from "
                        f"{', '.join(carried) or 'its inputs'}: the parameters turned non-finite in "
                        "the update of the step that broke", "op": r.op, "module": r.module,
                "source": r.source, "operands": [list(o) for o in r.operands],
                "nodes": [node_ids[r.node]] if r.node in node_ids else []}
    r = created[0]
    where = f" at {r.source}" if r.source else ""
    module = f" (module `{r.module}`)" if r.module else ""
    bad = [f"{label} had {negatives} negative and {zeros} zero values (min {lo:.3g})"
           for label, _shape, _finite, zeros, negatives, lo, _hi in r.operands if negatives or zeros]
    detail = ("; " + "; ".join(bad[:2])) if bad else ""
    node = node_ids.get(r.node, "")
    text = (f"the first non-finite value comes from `{r.op}`{where}{module}: {r.nan} NaN, "
            f"{r.posinf + r.neginf} Inf of {r.numel} values{detail}")
    return {"text": text, "op": r.op, "module": r.module, "source": r.source,
            "operands": [list(o) for o in r.operands], "nodes": [node] if node else []}


def _backward_origin(graph, node_tables: dict | None) -> dict | None:
    """The first node, in backward order, whose output gradient was non-finite."""
    if graph is None or not node_tables:
        return None
    nans, infs = node_tables.get("grad_nan", {}), node_tables.get("grad_inf", {})
    bad = [n for n in graph.nodes if n.seq >= 0 and (nans.get(n.id) or infs.get(n.id))]
    if not bad:
        return None
    first = max(bad, key=lambda n: n.seq)       # backward runs from the last-created node
    where = f" at {first.source}" if first.source else ""
    module = f" (module `{first.module}`)" if first.module else ""
    users = [d for d in graph.successors(first.id)]
    text = (f"the forward was finite; the gradient first turns non-finite in backward at the output "
            f"of `{first.op}`{where}{module}")
    return {"text": text, "op": first.op, "module": first.module, "source": first.source,
            "nodes": [first.id, *users]}
