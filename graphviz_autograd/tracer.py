"""The tracer: a live autograd graph -> a plain :class:`~graphviz_autograd.graph.Graph`.

``live/`` reads the torch objects; this module turns what it read into ids,
modules, nodes and edges. No tensor or autograd node survives a call.

Example:
    >>> import torch, graphviz_autograd as ga
    >>> net = torch.nn.Linear(4, 2)
    >>> loss = net(torch.randn(3, 4)).pow(2).mean()
    >>> g = ga.trace(loss, model=net)
    >>> sorted(g.params)
    ['bias', 'weight']
"""
from __future__ import annotations

from typing import Callable

import torch

from graphviz_autograd.errors import TraceInputError, describe
from graphviz_autograd.graph import _gc, ids
from graphviz_autograd.graph.model import Edge, Graph, Node, NodeKind, SavedTensor
from graphviz_autograd.live.models import parameter_names
from graphviz_autograd.live.nodes import OPAQUE_OPS, read_nodes
from graphviz_autograd.live.walk import flatten_roots, guard_release, walk_graph


def trace(outputs, *, model: torch.nn.Module | None = None, saved: bool = True,
          show_saved: bool = False) -> Graph:
    """Trace the autograd graph behind ``outputs`` into a :class:`Graph`.

    Args:
        outputs: a tensor, or a (nested) tuple/list/dict/dataclass of tensors.
            Entries that are not tensors or do not require grad are skipped;
            at least one must have an autograd graph.
        model: the module whose parameters name the parameter nodes
            (``param:conv1.weight``) and whose structure names op modules.
            DistributedDataParallel and ``torch.compile`` wrappers are unwrapped.
        saved: collect metadata (shape, dtype, bytes) of tensors saved for
            backward. Cheap; turn off for the fastest structural walk.
        show_saved: add one ``saved`` node per saved storage, linked to the
            ops that saved it.

    Returns:
        A frozen :class:`Graph` holding plain data only: no tensor, node or
        module reference survives this call.

    Raises:
        NotDifferentiableError: no entry of ``outputs`` has a graph.
        TraceInputError: ``outputs`` holds nothing tensor-like.
    """
    return trace_nodes(outputs, model=model, saved=saved, show_saved=show_saved)


def trace_nodes(outputs, *, model: torch.nn.Module | None = None, saved: bool = True,
                show_saved: bool = False, visit: Callable | None = None) -> Graph:
    """:func:`trace`, calling ``visit(live_node, node_id)`` for every node while the live
    nodes still exist (how the recorder and ``diagnose`` map live nodes to graph ids)."""
    roots = flatten_roots(outputs)
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TraceInputError(f"model= must be an nn.Module, got {describe(model)}; "
                              "pass the network whose parameters you want named")
    names = parameter_names(model)
    with _gc.paused():      # bench_trace.py lstm5000: 2.1-2.5 s -> 1.1-1.5 s (see graph/_gc.py)
        walked = walk_graph(roots)
        cols = read_nodes(walked.fns, names, saved or show_saved)
        graph = _build(cols, walked.edges, walked.roots, show_saved)
        if any(op in OPAQUE_OPS for op in cols.ops):
            graph = _annotate_opaque(graph, set(names.values()))
        if visit is not None:
            for fn, node in zip(walked.fns, graph.nodes):
                visit(fn, node.id)
        n = len(walked.fns)
        walked.fns.clear()
    guard_release(n, walked.edges)
    return graph


def _build(cols, raw_edges, root_refs, show_saved: bool) -> Graph:
    n = len(cols.kinds)
    modules, seqs, outputs = cols.modules, cols.seqs, cols.outputs
    _attribute_modules(cols.kinds, cols.params, modules, seqs, raw_edges, cols.tagged)
    node_ids = _ids(cols.kinds, cols.ops, cols.params, modules, seqs)
    rank = [-1] * n
    for r, i in enumerate(sorted((i for i in range(n) if seqs[i] >= 0), key=seqs.__getitem__)):
        rank[i] = r
    nodes = list(map(Node, node_ids, cols.kinds, cols.ops, modules, cols.sources, cols.params,
                     outputs, cols.saved, rank, cols.attrs))
    edges = [Edge(node_ids[s], node_ids[d], o, k, outputs[s][o] if o < len(outputs[s]) else None)
             for s, d, o, k in raw_edges]
    roots = []
    for name, i, output_nr, meta in root_refs:
        oid = ids.output_id(name)
        nodes.append(Node(id=oid, kind=NodeKind.OUTPUT, op="output", param=name, outputs=(meta,)))
        edges.append(Edge(node_ids[i], oid, output_nr, 0, meta))
        roots.append(oid)
    if show_saved:
        _add_saved_nodes(nodes, edges)
    return Graph(nodes=tuple(nodes), edges=tuple(edges), roots=tuple(roots))


def _annotate_opaque(graph: Graph, model_params: set[str]) -> Graph:
    """Name, on each compiled-region or checkpoint node whose function was not a module, the
    model's parameters under its module that the graph does not reach (attr ``hidden_params``:
    their gradients flow through this node)."""
    missing = sorted(model_params - set(graph.params))
    if not missing:
        return graph
    nodes = []
    for n in graph.nodes:
        attrs = dict(n.attrs)
        if "hides" in attrs and "hidden_params" not in attrs:   # its function was not a module
            own = [p for p in missing if not n.module or p.startswith(n.module + ".")]
            if own:
                n = n._replace(attrs=n.attrs + (("hidden_params", ", ".join(own)),))
        nodes.append(n)
    return Graph(nodes=tuple(nodes), edges=graph.edges, roots=graph.roots)


def _ids(kinds, ops, params, modules, seqs) -> list[str]:
    out = [""] * len(kinds)
    leaf_k = 0
    op_idx = []
    for i, kind in enumerate(kinds):
        if kind is NodeKind.PARAM:
            out[i] = ids.param_id(params[i])
        elif kind is NodeKind.LEAF:
            out[i] = ids.leaf_id(leaf_k)
            leaf_k += 1
        else:
            op_idx.append(i)
    op_seqs = [seqs[i] for i in op_idx]
    order = sorted(range(len(op_idx)), key=op_seqs.__getitem__)   # stable: ties keep walk order
    op_names = ids.op_ids([(modules[i], ops[i]) for i in op_idx], order)
    for j, i in enumerate(op_idx):
        out[i] = op_names[j]
    return out


def _attribute_modules(kinds, params, modules, seqs, raw_edges, tagged) -> None:
    """Give ops without an instrumentation tag the module of the parameter they consume.

    A unary chain on one parameter (``t()``, ``view``, ``expand`` of a weight) takes
    that parameter's module; an op consuming parameters (or such chains) of one
    module takes that module. Only the neighbourhood of parameters is visited.
    Nodes tagged by instrumentation keep their tag ("" is the root module).
    """
    PARAM = NodeKind.PARAM
    owner: dict[int, str] = {i: p.rpartition(".")[0] for i, p in enumerate(params)
                             if p and kinds[i] is PARAM}
    if not owner:
        return
    indeg = [0] * len(kinds)
    succ: dict[int, list[int]] = {}
    for s, d, _o, _k in raw_edges:
        indeg[d] += 1
        succ.setdefault(s, []).append(d)
    consumers: dict[int, set[str]] = {}
    frontier = list(owner)
    while frontier:                  # walk forward from parameters along unary chains
        nxt = []
        for s in frontier:
            for d in succ.get(s, ()):
                if indeg[d] == 1 and d not in owner:
                    owner[d] = owner[s]
                    nxt.append(d)
                elif owner[s]:
                    consumers.setdefault(d, set()).add(owner[s])
        frontier = nxt
    for d, mod in owner.items():
        if kinds[d] is not PARAM and not modules[d] and not tagged[d]:
            modules[d] = mod
    for d, mods in consumers.items():
        if len(mods) == 1 and d not in owner and not modules[d] and not tagged[d]:
            modules[d] = next(iter(mods))


def _add_saved_nodes(nodes: list[Node], edges: list[Edge]) -> None:
    by_storage: dict[str, SavedTensor] = {}
    users: dict[str, list[tuple[str, str]]] = {}
    for n in nodes:
        for s in n.saved:
            if s.freed or not s.storage:
                continue
            by_storage.setdefault(s.storage, s)
            users.setdefault(s.storage, []).append((n.id, s.name))
    for storage, s in by_storage.items():
        sid = ids.saved_id(int(storage[1:]))
        nodes.append(Node(id=sid, kind=NodeKind.SAVED, op="saved", param=s.name,
                          outputs=(s.meta,), saved=(s,)))
        for user, _name in users[storage]:
            edges.append(Edge(sid, user, 0, -1, s.meta))
