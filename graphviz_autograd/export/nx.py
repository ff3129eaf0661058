"""networkx and GraphML exports."""
from __future__ import annotations

import os

from graphviz_autograd.graph.model import Graph, TensorMeta


def _shape(m: TensorMeta | None):
    return None if m is None else m.shape


def to_networkx(graph: Graph):
    """A ``networkx.MultiDiGraph``-free ``DiGraph`` with every attribute of nodes and edges.

    Parallel edges (one tensor used twice by the same op) are merged into one
    networkx edge whose ``inputs`` attribute lists every ``(output_nr, input_nr)``.
    """
    import networkx as nx

    g = nx.DiGraph(roots=list(graph.roots), fingerprint=graph.fingerprint())
    for n in graph.nodes:
        g.add_node(n.id, kind=n.kind.value, op=n.op, module=n.module, source=n.source,
                   param=n.param, seq=n.seq,
                   shapes=[_shape(m) for m in n.outputs],
                   dtypes=[m.dtype if m else None for m in n.outputs],
                   saved=[{"name": s.name, "shape": _shape(s.meta), "nbytes": s.nbytes,
                           "storage": s.storage, "freed": s.freed} for s in n.saved],
                   saved_bytes=sum(s.nbytes for s in n.saved),
                   attrs=dict(n.attrs))
    for e in graph.edges:
        if g.has_edge(e.src, e.dst):
            g.edges[e.src, e.dst]["inputs"].append((e.output_nr, e.input_nr))
            continue
        g.add_edge(e.src, e.dst, output_nr=e.output_nr, input_nr=e.input_nr,
                   inputs=[(e.output_nr, e.input_nr)], shape=_shape(e.meta),
                   dtype=e.meta.dtype if e.meta else None)
    return g


def _flat(value):
    if value is None:
        return ""
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def to_graphml(graph: Graph, path) -> str:
    """Write GraphML (attributes flattened to strings where GraphML needs scalars)."""
    import networkx as nx

    g = to_networkx(graph)
    flat = nx.DiGraph()
    flat.graph.update({k: _flat(v) for k, v in g.graph.items()})
    for nid, attrs in g.nodes(data=True):
        flat.add_node(nid, **{k: _flat(v) for k, v in attrs.items()})
    for s, d, attrs in g.edges(data=True):
        flat.add_edge(s, d, **{k: _flat(v) for k, v in attrs.items()})
    path = os.fspath(path)
    nx.write_graphml(flat, path)
    return path
