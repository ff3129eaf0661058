"""What the library finds wrong: plain, frozen values shared by ``ga.diagnose`` (a live
model), the findings read from a recorded run (``recorded.py``), the ``doctor``
command, the ``testing`` assertions and the dashboard.

Nothing here imports torch, so a :class:`Diagnosis` can be printed, compared
and pickled after the model is gone, and the dashboard can show findings.

Example:
    >>> from graphviz_autograd.graph.model import Graph
    >>> f = Finding(kind=FindingKind.UNUSED_PARAMETER, severity=Severity.ERROR,
    ...             title="`head.weight` gets no gradient", message="...", params=("head.weight",))
    >>> d = Diagnosis(findings=(f,), graph=Graph(nodes=(), edges=(), roots=()))
    >>> d.ok, len(d.errors)
    (False, 1)
"""
from __future__ import annotations

import enum
import textwrap
from dataclasses import dataclass, field

from graphviz_autograd.graph.model import Graph, NodeKind


class FindingKind(str, enum.Enum):
    """What kind of problem a :class:`Finding` reports."""

    UNUSED_PARAMETER = "unused_parameter"
    NONFINITE_GRADIENT = "nonfinite_gradient"
    NONFINITE_FORWARD = "nonfinite_forward"
    NONFINITE_LOSS = "nonfinite_loss"
    VANISHING = "vanishing"
    EXPLODING = "exploding"
    DEAD_UNITS = "dead_units"
    SATURATED_UNITS = "saturated_units"
    SHAPE_ERROR = "shape_error"
    INPLACE_ERROR = "inplace_error"
    BATCH_MIXING = "batch_mixing"
    ZERO_GRADIENT = "zero_gradient"


class Severity(str, enum.Enum):
    """``error``: training is broken. ``warning``: likely hurts. ``info``: context.

    The one scale of the library: ``ga.diagnose``, the ``doctor`` (exit code 1 on an
    error), the ``testing`` assertions (each fails on the errors of its kinds) and
    the findings read from a recorded run all use it.
    """

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


def plural(n: int, word: str) -> str:
    """``plural(1, "node")`` -> ``"1 node"``; ``plural(3, "node")`` -> ``"3 nodes"``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def quote(text: str) -> str:
    """A message quoted from torch, without its final period (we add our own)."""
    return text.strip().rstrip(".")


@dataclass(frozen=True)
class Finding:
    """One problem, explained for a person.

    Attributes:
        kind: what kind of problem.
        severity: how bad it is.
        title: one line saying what is wrong.
        message: what happened and where (module path, ``file.py:line``).
        hint: what to check or change.
        nodes: stable ids of the graph nodes involved (see ``graphviz_autograd.graph.ids``).
        params: qualified names of the parameters involved.
        module: module path where it happens ("" when outside any module).
        source: ``file.py:line`` of the user code involved ("" when unknown).
        op: the forward op involved (e.g. ``"log"``, ``"detach"``, ``"relu_"``).
        values: named numbers behind the finding, e.g. ``(("dead_fraction", 1.0),)``.
    """

    kind: FindingKind
    severity: Severity
    title: str
    message: str
    hint: str = ""
    nodes: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    module: str = ""
    source: str = ""
    op: str = ""
    values: tuple[tuple[str, float], ...] = ()

    def value(self, name: str, default: float | None = None) -> float | None:
        """The number called ``name`` in :attr:`values` (``default`` if absent)."""
        return dict(self.values).get(name, default)

    def __str__(self) -> str:
        lines = [f"[{self.severity.value}] {self.kind.value}: {self.title}"]
        wrap = textwrap.TextWrapper(width=100, initial_indent="    ", subsequent_indent="    ")
        for para in self.message.split("\n"):
            lines.extend(wrap.wrap(para) or [""])
        if self.hint:
            hint = textwrap.TextWrapper(width=100, initial_indent="    check: ",
                                        subsequent_indent="           ")
            lines.extend(hint.wrap(self.hint))
        if self.nodes:
            shown = ", ".join(self.nodes[:6]) + (", ..." if len(self.nodes) > 6 else "")
            lines.append(f"    nodes: {shown}")
        return "\n".join(lines)


@dataclass(frozen=True)
class LayerStats:
    """Gradient and parameter norms of one module's own (direct) trainable parameters."""

    module: str
    grad_norm: float
    param_norm: float
    numel: int
    nonfinite: bool = False

    @property
    def ratio(self) -> float:
        """``grad_norm / param_norm`` (``grad_norm`` when the parameters are all zero)."""
        return self.grad_norm / self.param_norm if self.param_norm > 0 else self.grad_norm


@dataclass(frozen=True)
class Diagnosis:
    """Everything :func:`diagnose` found, with the graph it looked at.

    Attributes:
        findings: the problems, most severe first, then in forward order.
        graph: the traced graph (the loss graph plus, for cut paths, the part
            that no longer reaches the loss; the partial graph on a forward error).
        loss: the loss value, or None when the forward failed.
        layers: per-module gradient statistics, in forward order.
        notes: what the diagnosis could not check and why.
    """

    findings: tuple[Finding, ...]
    graph: Graph
    loss: float | None = None
    layers: tuple[LayerStats, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when no finding has severity ``error``."""
        return not self.errors

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.WARNING)

    def by_kind(self, kind: FindingKind | str) -> tuple[Finding, ...]:
        """Findings of one kind, e.g. ``d.by_kind("unused_parameter")``."""
        kind = FindingKind(kind)
        return tuple(f for f in self.findings if f.kind is kind)

    @property
    def highlight(self) -> tuple[str, ...]:
        """Ids of every node named by an error or warning (for ``Graph.render(highlight=...)``)."""
        ids = [n for f in self.findings if f.severity is not Severity.INFO for n in f.nodes]
        return tuple(i for i in dict.fromkeys(ids) if i in self.graph)

    def subgraph_for(self, finding: Finding, hops: int = 2) -> Graph:
        """The part of :attr:`graph` around ``finding``: its nodes and ``hops`` steps both ways.

        Parameters and outputs next to the kept nodes are kept too, so the
        picture shows which weights feed the offending ops.
        """
        keep = {n for n in finding.nodes if n in self.graph}
        keep |= {self.graph.params[p].id for p in finding.params if p in self.graph.params}
        succ: dict[str, list[str]] = {}
        pred: dict[str, list[str]] = {}
        for e in self.graph.edges:
            succ.setdefault(e.src, []).append(e.dst)
            pred.setdefault(e.dst, []).append(e.src)
        frontier = set(keep)
        for _ in range(hops):
            nxt = {m for n in frontier for m in succ.get(n, []) + pred.get(n, [])} - keep
            keep |= nxt
            frontier = nxt
        for nid in list(keep):
            for m in pred.get(nid, ()):
                if self.graph.node(m).kind is NodeKind.PARAM:
                    keep.add(m)
            for m in succ.get(nid, ()):
                if self.graph.node(m).kind is NodeKind.OUTPUT:
                    keep.add(m)
        return self.graph.subgraph(keep)

    def __str__(self) -> str:
        errors, warnings = len(self.errors), len(self.warnings)
        head = "Diagnosis: "
        if not self.findings:
            head += "no problems found"
        else:
            parts = [plural(errors, "error"), plural(warnings, "warning")]
            infos = len(self.findings) - errors - warnings
            if infos:
                parts.append(plural(infos, "note"))
            head += ", ".join(parts)
        extra = []
        if self.loss is not None:
            extra.append(f"loss = {self.loss:.6g}")
        extra.append(f"graph: {plural(len(self.graph), 'node')}")
        lines = [f"{head} ({'; '.join(extra)})"]
        lines.extend(str(f) for f in self.findings)
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)
