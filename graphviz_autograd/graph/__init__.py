"""The graph model: plain, frozen data describing an autograd graph (stdlib only).

``model`` (Graph, Node, Edge, NodeKind, TensorMeta, SavedTensor), ``ids`` (the
step-stable id scheme), ``serialize`` (the JSON graph file format) and ``fold``
(modules folded into single nodes). Nothing here imports torch.
"""
from graphviz_autograd.graph.model import Edge, Graph, Node, NodeKind, SavedTensor, TensorMeta
from graphviz_autograd.graph.serialize import from_json, load_graph, to_dict, to_json

__all__ = ["Edge", "Graph", "Node", "NodeKind", "SavedTensor", "TensorMeta", "from_json",
           "load_graph", "to_dict", "to_json"]
