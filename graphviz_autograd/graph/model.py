"""The graph model: plain, frozen data describing an autograd graph.

Nothing here imports torch. A :class:`Graph` holds strings, numbers and tuples
only, so it can be compared, hashed, serialized and sent to another process.

Edges point the way data flows in the forward pass: from the node that
produced a tensor to the node that consumed it. In autograd terms an edge
``src -> dst`` is the entry ``(src_fn, output_nr)`` at position ``input_nr``
of ``dst_fn.next_functions``.

Example:
    >>> g = Graph(nodes=(Node(id="param:w", kind=NodeKind.PARAM, op="AccumulateGrad"),),
    ...           edges=(), roots=())
    >>> g.node("param:w").kind
    <NodeKind.PARAM: 'param'>
"""
from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Iterator, Mapping, NamedTuple

SCHEMA_VERSION = 1


class NodeKind(str, enum.Enum):
    """What a node stands for."""

    OP = "op"            # an autograd function (e.g. AddmmBackward0)
    PARAM = "param"      # AccumulateGrad of a model parameter
    LEAF = "leaf"        # AccumulateGrad of a user tensor that requires grad
    OUTPUT = "output"    # a traced root tensor (e.g. the loss)
    SAVED = "saved"      # a tensor saved for backward (only with show_saved)
    MODULE = "module"    # a folded module, or folded repeated calls of one (graph.fold)


class TensorMeta(NamedTuple):
    """Shape, dtype and device of a tensor, as plain data."""

    shape: tuple[int, ...]
    dtype: str
    device: str = "cpu"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def short(self) -> str:
        """``(64, 10)`` style text for labels."""
        return "(" + ", ".join(str(d) for d in self.shape) + ")"


class SavedTensor(NamedTuple):
    """A tensor autograd saved for backward.

    ``storage`` is an opaque key equal for tensors sharing one storage; bytes
    are counted once per storage in :meth:`Graph.saved_bytes`. ``freed`` is
    true when ``backward()`` already released the buffers.
    """

    name: str
    meta: TensorMeta | None = None
    nbytes: int = 0
    storage: str = ""
    freed: bool = False


class Node(NamedTuple):
    """One node of the graph; :mod:`graphviz_autograd.graph.ids` documents the id scheme.

    Nodes and edges are named tuples: immutable, hashable, and cheap to build
    (tracing makes one per autograd node).
    """

    id: str
    kind: NodeKind
    op: str
    module: str = ""             # module path, e.g. "features.3.conv1"; "" when unknown
    source: str = ""             # "file.py:42" of the forward call that created it
    param: str = ""              # qualified parameter name for PARAM nodes
    outputs: tuple[TensorMeta | None, ...] = ()   # forward outputs (what flows out)
    saved: tuple[SavedTensor, ...] = ()
    seq: int = -1                # forward creation order (normalised), -1 for leaves
    attrs: tuple[tuple[str, str], ...] = ()       # extra plain key/values

    @property
    def label(self) -> str:
        if self.kind is NodeKind.PARAM:
            return self.param
        return self.op


class Edge(NamedTuple):
    """Data flows ``src`` (its forward output ``output_nr``) -> ``dst`` (input ``input_nr``)."""

    src: str
    dst: str
    output_nr: int = 0
    input_nr: int = 0
    meta: TensorMeta | None = None


@dataclass(frozen=True)
class Graph:
    """A traced autograd graph: nodes, edges and the ids of the output nodes."""

    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    roots: tuple[str, ...]
    _index: Mapping[str, int] = field(default=None, compare=False, repr=False, hash=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        index = {n.id: i for i, n in enumerate(self.nodes)}
        if len(index) != len(self.nodes):
            seen: set[str] = set()
            dup = next(n.id for n in self.nodes if n.id in seen or seen.add(n.id))
            raise ValueError(f"duplicate node id {dup!r} in Graph")
        object.__setattr__(self, "_index", index)

    # -- lookup ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    def node(self, node_id: str) -> Node:
        try:
            return self.nodes[self._index[node_id]]
        except KeyError:
            close = [n.id for n in self.nodes if str(node_id).split(":")[-1] in n.id][:5]
            hint = f"; similar ids: {close}" if close else ""
            raise KeyError(f"no node with id {node_id!r} in this graph{hint}") from None

    def by_kind(self, kind: NodeKind | str) -> tuple[Node, ...]:
        kind = NodeKind(kind)
        return tuple(n for n in self.nodes if n.kind is kind)

    @property
    def params(self) -> dict[str, Node]:
        """Parameter nodes by qualified name."""
        return {n.param: n for n in self.nodes if n.kind is NodeKind.PARAM}

    def successors(self, node_id: str) -> list[str]:
        return [e.dst for e in self.edges if e.src == node_id]

    def predecessors(self, node_id: str) -> list[str]:
        return [e.src for e in self.edges if e.dst == node_id]

    def modules(self) -> list[str]:
        """Module paths that own at least one node, in first-seen order."""
        return list(dict.fromkeys(n.module for n in self.nodes if n.module))

    def saved_bytes(self) -> int:
        """Bytes of saved tensors, each storage counted once."""
        seen: dict[str, int] = {}
        for n in self.nodes:
            for s in n.saved:
                if not s.freed:
                    key = s.storage or f"{n.id}/{s.name}"
                    seen[key] = max(seen.get(key, 0), s.nbytes)
        return sum(seen.values())

    def subgraph(self, node_ids) -> "Graph":
        """The induced subgraph on ``node_ids`` (order kept)."""
        keep = set(node_ids)
        return Graph(
            nodes=tuple(n for n in self.nodes if n.id in keep),
            edges=tuple(e for e in self.edges if e.src in keep and e.dst in keep),
            roots=tuple(r for r in self.roots if r in keep),
        )

    def fingerprint(self) -> str:
        """A hash of the structure only: ids, kinds, ops, modules and edges.

        Shapes, saved tensors and source lines do not enter it, so the last,
        smaller batch of an epoch keeps the fingerprint of the others.
        """
        h = hashlib.sha256()
        for n in sorted(self.nodes, key=lambda n: n.id):
            h.update(f"{n.id}\x1f{n.kind.value}\x1f{n.op}\x1f{n.module}\x1e".encode())
        for e in sorted(self.edges, key=lambda e: (e.src, e.dst, e.output_nr, e.input_nr)):
            h.update(f"{e.src}\x1f{e.dst}\x1f{e.output_nr}\x1f{e.input_nr}\x1e".encode())
        h.update("\x1f".join(self.roots).encode())
        return h.hexdigest()[:16]

    # -- exports: conveniences that call export/ (imported on use: export imports this
    # module, never the reverse at import time; tests pin the signatures to export's)
    def to_json(self, indent: int | None = None) -> str:
        """Lossless JSON text (:func:`graphviz_autograd.load_graph` reads it back)."""
        from graphviz_autograd.graph.serialize import to_json

        return to_json(self, indent=indent)

    def to_dict(self) -> dict:
        from graphviz_autograd.graph.serialize import to_dict

        return to_dict(self)

    def to_networkx(self):
        """A ``networkx.DiGraph`` with every node and edge attribute."""
        from graphviz_autograd.export.nx import to_networkx

        return to_networkx(self)

    def to_graphml(self, path):
        from graphviz_autograd.export.nx import to_graphml

        return to_graphml(self, path)

    def to_dot(self, *, depth: int | None = None, show_shapes: bool = True, legend: bool = True,
               clusters: bool = True, split_params: int | None = 3, split_fanout: int | None = 4,
               max_nodes: int | None = 2000, highlight=(), colors=None, title: str = "",
               focus: str | None = None) -> str:
        """DOT text; the arguments are those of :func:`graphviz_autograd.export.dot.to_dot`."""
        from graphviz_autograd.export.dot import to_dot

        return to_dot(self, depth=depth, show_shapes=show_shapes, legend=legend, clusters=clusters,
                      split_params=split_params, split_fanout=split_fanout, max_nodes=max_nodes,
                      highlight=highlight, colors=colors, title=title, focus=focus)

    def to_graphviz(self, *, depth: int | None = None, show_shapes: bool = True,
                    legend: bool = True, clusters: bool = True, split_params: int | None = 3,
                    split_fanout: int | None = 4, max_nodes: int | None = 2000, highlight=(),
                    colors=None, title: str = "", focus: str | None = None):
        """A ``graphviz.Digraph`` of the DOT text (as torchviz returns): ``.render()``, ``.view()``,
        inline in notebooks; the arguments are :meth:`to_dot`'s."""
        from graphviz_autograd.export.dot import to_graphviz

        return to_graphviz(self, depth=depth, show_shapes=show_shapes, legend=legend,
                           clusters=clusters, split_params=split_params, split_fanout=split_fanout,
                           max_nodes=max_nodes, highlight=highlight, colors=colors, title=title,
                           focus=focus)

    def render(self, path, *, timeout: float | None = 300, depth: int | None = None,
               show_shapes: bool = True, legend: bool = True, clusters: bool = True,
               split_params: int | None = 3, split_fanout: int | None = 4,
               max_nodes: int | None = 2000, highlight=(), colors=None, title: str = "",
               focus: str | None = None) -> str:
        """Render to ``path``; the suffix (.svg, .png, .pdf, .dot) picks the format. Returns the path."""
        from graphviz_autograd.export.dot import render

        return render(self, path, timeout=timeout, depth=depth, show_shapes=show_shapes,
                      legend=legend, clusters=clusters, split_params=split_params,
                      split_fanout=split_fanout, max_nodes=max_nodes, highlight=highlight,
                      colors=colors, title=title, focus=focus)

    def _repr_svg_(self) -> str:
        from graphviz_autograd.export.dot import to_svg

        return to_svg(self)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.kind.value] = counts.get(n.kind.value, 0) + 1
        parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        n, e = len(self.nodes), len(self.edges)
        return f"Graph({n} node{'' if n == 1 else 's'}: {parts}; {e} edge{'' if e == 1 else 's'})"

    def __repr__(self) -> str:
        return self.summary()
