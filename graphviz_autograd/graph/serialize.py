"""Lossless JSON for :class:`Graph` (no pickle, no eval; safe on foreign files).

Example:
    >>> from graphviz_autograd.graph.model import Graph
    >>> g = Graph(nodes=(), edges=(), roots=())
    >>> load_graph(g.to_json()) == g
    True
"""
from __future__ import annotations

import json
from typing import Any

from graphviz_autograd.graph import _gc
from graphviz_autograd.errors import FormatError
from graphviz_autograd.graph.model import SCHEMA_VERSION, Edge, Graph, Node, NodeKind, SavedTensor, TensorMeta

FORMAT = "graphviz-autograd-graph"


def _meta(m: TensorMeta | None):
    return None if m is None else [list(m.shape), m.dtype, m.device]


def _unmeta(v) -> TensorMeta | None:
    if v is None:
        return None
    shape, dtype, device = v
    return TensorMeta(tuple(int(d) for d in shape), str(dtype), str(device))


def to_dict(graph: Graph) -> dict[str, Any]:
    nodes = []
    for n in graph.nodes:
        d: dict[str, Any] = {"id": n.id, "kind": n.kind.value, "op": n.op}
        if n.module:
            d["module"] = n.module
        if n.source:
            d["source"] = n.source
        if n.param:
            d["param"] = n.param
        if n.outputs:
            d["outputs"] = [_meta(m) for m in n.outputs]
        if n.saved:
            d["saved"] = [{"name": s.name, "meta": _meta(s.meta), "nbytes": s.nbytes,
                           "storage": s.storage, "freed": s.freed} for s in n.saved]
        if n.seq >= 0:
            d["seq"] = n.seq
        if n.attrs:
            d["attrs"] = [list(a) for a in n.attrs]
        nodes.append(d)
    edges = [[e.src, e.dst, e.output_nr, e.input_nr, _meta(e.meta)] for e in graph.edges]
    return {"format": FORMAT, "version": SCHEMA_VERSION, "roots": list(graph.roots),
            "nodes": nodes, "edges": edges}


def to_json(graph: Graph, indent: int | None = None) -> str:
    return json.dumps(to_dict(graph), indent=indent, separators=None if indent else (",", ":"))


def from_dict(data: dict[str, Any]) -> Graph:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FormatError(f"not a graphviz-autograd graph (format field is "
                          f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r}); "
                          "load text written by Graph.to_json()")
    version = data.get("version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise FormatError(f"graph JSON has version {version!r}, this graphviz-autograd reads up to "
                          f"{SCHEMA_VERSION}; upgrade graphviz-autograd to load it")
    try:
        nodes = tuple(
            Node(id=str(d["id"]), kind=NodeKind(d["kind"]), op=str(d["op"]),
                 module=str(d.get("module", "")), source=str(d.get("source", "")),
                 param=str(d.get("param", "")),
                 outputs=tuple(_unmeta(m) for m in d.get("outputs", ())),
                 saved=tuple(SavedTensor(name=str(s["name"]), meta=_unmeta(s["meta"]),
                                         nbytes=int(s["nbytes"]), storage=str(s["storage"]),
                                         freed=bool(s["freed"])) for s in d.get("saved", ())),
                 seq=int(d.get("seq", -1)),
                 attrs=tuple((str(k), str(v)) for k, v in d.get("attrs", ())))
            for d in data["nodes"])
        edges = tuple(Edge(str(s), str(t), int(o), int(k), _unmeta(m))
                      for s, t, o, k, m in data["edges"])
        roots = tuple(str(r) for r in data["roots"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"malformed graph JSON: {exc!r}; the text was not written by "
                          "Graph.to_json() or was damaged") from None
    known: set[str] = set()
    for n in nodes:
        if n.id in known:
            raise FormatError(f"malformed graph JSON: duplicate node id {n.id!r}; the text was "
                              "not written by Graph.to_json() or was damaged")
        known.add(n.id)
    for ref in (*(x for e in edges for x in (e.src, e.dst)), *roots):
        if ref not in known:
            raise FormatError(f"malformed graph JSON: an edge or root names unknown node {ref!r}; "
                              "the text was not written by Graph.to_json() or was damaged")
    return Graph(nodes=nodes, edges=edges, roots=roots)


def from_json(text: str | bytes) -> Graph:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"graph text is not valid JSON ({exc}); pass the string "
                          "Graph.to_json() returned") from None
    with _gc.paused():
        return from_dict(data)


def load_graph(source) -> Graph:
    """Load a graph from JSON text, or from a path to a ``.json`` file."""
    import os

    if isinstance(source, os.PathLike) or (isinstance(source, str) and not source.lstrip().startswith("{")
                                           and source.endswith(".json")):
        with open(source, encoding="utf-8") as f:
            return from_json(f.read())
    return from_json(source)
