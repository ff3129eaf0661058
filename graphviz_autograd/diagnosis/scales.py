"""Which parameters get no (or a tiny) gradient because something on their way to the loss
blocks it: a multiplicative scale at (or near) zero, or ReLUs that are all dead.

Works on the plain :class:`~graphviz_autograd.graph.model.Graph` (no torch), so
``ga.diagnose`` (a live model) and the findings of a recorded run share it.

A *gate* is an op that multiplies by a parameter whose values are all (nearly)
zero: the last normalisation scale of a residual branch initialised at zero
(``torchvision.models.resnet18(zero_init_residual=True)``, timm's ResNets), a
layer scale of 1e-6 (ConvNeXt), a zero-initialised projection. Everything whose
only way to the loss passes a gate gets a zero (or 1e-6 times smaller) gradient.
When the layers before the branch still get their gradient around it (a skip
connection) and the scale itself gets a gradient, this is by design: the branch
starts learning after the first update.

Example:
    >>> from graphviz_autograd.graph.model import Graph, Node, Edge, NodeKind
    >>> g = Graph(nodes=(Node("param:w", NodeKind.PARAM, "AccumulateGrad", param="w"),
    ...                  Node("MulBackward0:0", NodeKind.OP, "MulBackward0"),
    ...                  Node("output:loss", NodeKind.OUTPUT, "loss")),
    ...           edges=(Edge("param:w", "MulBackward0:0"), Edge("MulBackward0:0", "output:loss")),
    ...           roots=("output:loss",))
    >>> find_gates(g, {"w": 0.0})
    {'MulBackward0:0': 'w'}
"""
from __future__ import annotations

import re
from collections import deque

from graphviz_autograd.graph.model import Graph, NodeKind

GATE_MAX = 0.1           # a scale (norm weight, layer scale) whose values all stay below this gates
WEIGHT_GATE_MAX = 1e-6   # a Linear/Conv weight gates only when it is (nearly) all zero
NEAR_ZERO = 1e-3         # a gate this small "starts at zero" (worth a note)
_PASS = re.compile(r"(View|UnsafeView|Unsqueeze|Squeeze|Reshape|Expand|Permute|Transpose|T|"
                   r"Alias|ToCopy|Clone|Select|Slice)Backward\d*$")
_SCALE_ANY = re.compile(r"(Mul|Addcmul)Backward\d*$")          # x * gamma: any parameter
_SCALE_NORM = re.compile(r".*Norm.*Backward\d*$")                # the weight of a normalisation
_SCALE_WEIGHT = re.compile(r".*(Mm|Addmm|Bmm|Baddbmm|Convolution|Linear).*Backward\d*$")


def find_gates(graph: Graph, absmax: dict[str, float], limit: float = GATE_MAX,
               weight_limit: float = WEIGHT_GATE_MAX) -> dict[str, str]:
    """``{op node id: parameter}`` of the ops that multiply by a small scale: a parameter used
    by a multiplication or as a normalisation weight whose values all stay below ``limit``,
    or a Linear/Conv weight that is (nearly) all zero (below ``weight_limit``).

    Args:
        graph: the traced graph.
        absmax: ``{parameter: max |value|}`` (or any upper bound of it, e.g. its norm).
    """
    gates: dict[str, str] = {}
    succ = _adjacency(graph)[0]
    for name, node in graph.params.items():
        value = absmax.get(name, limit + 1)
        if value > limit:
            continue
        weight = name.rpartition(".")[2] in ("weight", "gamma", "scale", "ls", "layer_scale")
        for op_id in _consumers(graph, succ, node.id):
            op = graph.node(op_id).op
            if _SCALE_ANY.match(op) or (weight and _SCALE_NORM.match(op)) or (
                    weight and value <= weight_limit and _SCALE_WEIGHT.match(op)):
                gates[op_id] = name
    return gates


def is_weight_gate(op: str) -> bool:
    """Whether a gate is a Linear/Conv weight (not a scale that 1 would open)."""
    return bool(_SCALE_WEIGHT.match(op)) and not _SCALE_ANY.match(op) and not _SCALE_NORM.match(op)


def _adjacency(graph: Graph):
    succ: dict[str, list[str]] = {}
    pred: dict[str, list[str]] = {}
    for e in graph.edges:
        succ.setdefault(e.src, []).append(e.dst)
        pred.setdefault(e.dst, []).append(e.src)
    return succ, pred


def _consumers(graph: Graph, succ, node_id: str) -> list[str]:
    """The first ops after ``node_id`` that compute (view-like ops are passed through)."""
    out, todo, seen = [], [node_id], {node_id}
    while todo:
        for nxt in succ.get(todo.pop(), ()):
            if nxt in seen:
                continue
            seen.add(nxt)
            node = graph.node(nxt)
            if node.kind is NodeKind.OP and _PASS.match(node.op):
                todo.append(nxt)
            elif node.kind is NodeKind.OP:
                out.append(nxt)
    return out


class Blocking:
    """Which parameters reach ``roots`` only through ``blockers`` (op node ids).

    A blocker stops the gradient flowing to its data inputs, not to the
    parameters it uses itself (a zero scale still gets its own gradient).

    Args:
        graph: the traced graph.
        blockers: ``{op node id: scale}``: a gate's largest value, 0 for dead ReLUs.
        roots: node ids of the loss (default: the graph's roots).
    """

    def __init__(self, graph: Graph, blockers: dict[str, float], roots=None):
        self.graph, self.blockers = graph, dict(blockers)
        self.succ, self.pred = _adjacency(graph)
        self._chain: dict[str, bool] = {}
        start = [r for r in (roots if roots is not None else graph.roots) if r in graph]
        self._roots = start
        self._scale: dict[str, float] | None = None
        self.params = graph.params
        self.free = set(start)          # nodes whose gradient does not pass a blocker
        todo = deque(start)
        while todo:
            v = todo.popleft()
            for u in self.pred.get(v, ()):
                if u in self.free or (v in self.blockers and not self._param_chain(u)):
                    continue
                self.free.add(u)
                todo.append(u)

    def _param_chain(self, node_id: str) -> bool:
        """A parameter, or view-like ops over parameters only (``gamma[:, None, None]``)."""
        known = self._chain.get(node_id)
        if known is None:
            node = self.graph.node(node_id)
            self._chain[node_id] = False            # cycles cannot happen; guard anyway
            preds = self.pred.get(node_id, ())
            known = node.kind is NodeKind.PARAM or (
                node.kind is NodeKind.OP and bool(_PASS.match(node.op)) and bool(preds)
                and all(self._param_chain(p) for p in preds))
            self._chain[node_id] = known
        return known

    def scale(self, param: str) -> float:
        """The largest product of blocker scales along any path from ``param`` to the loss:
        1.0 when a path avoids every blocker, 0.0 for no path (or only through dead ReLUs).
        Nested gates multiply (a branch inside a branch), which the gradient does too."""
        if self._scale is None:
            self._scale = self._scales()
        node = self.params.get(param)
        return self._scale.get(node.id, 0.0) if node is not None else 0.0

    def _scales(self) -> dict[str, float]:
        order, indegree = [], {n.id: 0 for n in self.graph.nodes}
        for targets in self.succ.values():
            for t in targets:
                indegree[t] = indegree.get(t, 0) + 1
        todo = deque(n for n, d in indegree.items() if d == 0)
        while todo:                                  # topological order, inputs first
            v = todo.popleft()
            order.append(v)
            for w in self.succ.get(v, ()):
                indegree[w] -= 1
                if not indegree[w]:
                    todo.append(w)
        best = {r: 1.0 for r in self._roots}
        for v in reversed(order):                    # the loss first
            if v in best and v in self._roots:
                continue
            value = 0.0
            for w in self.succ.get(v, ()):
                factor = best.get(w, 0.0)
                if w in self.blockers and not self._param_chain(v):
                    factor *= self.blockers[w]
                value = max(value, factor)
            best[v] = value
        return best

    def blocked(self, param: str) -> bool:
        """True when every path from ``param`` to the loss passes a blocker."""
        node = self.params.get(param)
        return node is not None and node.id not in self.free

    def blockers_of(self, param: str) -> list[str]:
        """The blockers met on the way from ``param`` to the loss, nearest first."""
        node = self.params.get(param)
        if node is None:
            return []
        found, todo, seen = [], deque([node.id]), {node.id}
        while todo:
            for nxt in self.succ.get(todo.popleft(), ()):
                if nxt in seen:
                    continue
                seen.add(nxt)
                if nxt in self.blockers:
                    found.append(nxt)
                elif nxt not in self.free:
                    todo.append(nxt)
        return found

    def fed_by(self, param: str) -> list[str]:
        """Blockers whose output is the data input of ``param``'s layer (a dead ReLU before a
        Linear makes its weight's gradient zero without cutting it off the loss)."""
        node = self.params.get(param)
        if node is None:
            return []
        found = []
        for op in _consumers(self.graph, self.succ, node.id):
            todo = [u for u in self.pred.get(op, ()) if not self._param_chain(u)]
            while todo:
                u = todo.pop()
                if u in self.blockers:
                    found.append(u)
                elif _PASS.match(self.graph.node(u).op):
                    todo.extend(self.pred.get(u, ()))
        return found

    def bypassed(self, param: str) -> bool:
        """True when the input of ``param``'s layer still gets a gradient around the blockers
        (the layer sits in a branch with a skip connection around it)."""
        node = self.params.get(param)
        if node is None:
            return False
        todo = deque(_consumers(self.graph, self.succ, node.id))
        seen = set(todo)
        while todo:
            for u in self.pred.get(todo.popleft(), ()):
                if u in seen or self._param_chain(u):
                    continue
                if u in self.free:
                    return True
                seen.add(u)
                todo.append(u)
        return False


def explain(blocking: Blocking, gates: dict[str, str], gate_grads: dict[str, float],
            zero=()):
    """``{parameter: (reason, blockers)}`` for every parameter the blockers cut off the loss,
    and for those in ``zero`` (exactly zero gradient) whose layer input comes from a blocker.

    ``reason`` is ``"dead"`` (a dead-ReLU blocker is on the way, or feeds the layer all
    zeros), ``"branch"`` (only gates whose scales get a gradient, and a skip connection
    around them), ``"gate"`` (only such gates, no way around them) or ``"stuck"`` (a
    gate whose scale gets no gradient either).
    """
    out = {}
    for name in blocking.params:
        if not blocking.blocked(name):
            fed = blocking.fed_by(name) if name in zero else []
            dead = [b for b in fed if b not in gates]
            if dead:
                out[name] = ("dead", dead)
            continue
        found = blocking.blockers_of(name)
        if any(b not in gates for b in found):
            out[name] = ("dead", found)
        elif any(not gate_grads.get(gates[b], 0.0) > 0 for b in found):
            out[name] = ("stuck", found)
        else:
            out[name] = ("branch" if blocking.bypassed(name) else "gate", found)
    return out
