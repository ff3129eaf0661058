"""graphviz-autograd: see what PyTorch autograd built, and why a network does not learn.

Example:
    >>> import torch, graphviz_autograd as ga
    >>> net = torch.nn.Linear(4, 2)
    >>> graph = ga.trace(net(torch.randn(3, 4)).sum(), model=net)
    >>> graph.node("param:weight").outputs[0].shape
    (2, 4)
"""
from .errors import GraphvizAutogradError
from .export.serialize import load_graph
from .instrumentation import instrument
from .model import Edge, Graph, Node, NodeKind, SavedTensor, TensorMeta
from .recorder import Recorder
from .store import open_run
from .tracer import trace

__version__ = "0.1.0"

__all__ = [
    "Edge", "Graph", "GraphvizAutogradError", "Node", "NodeKind", "Recorder", "SavedTensor",
    "TensorMeta", "instrument", "load_graph", "open_run", "trace",
]
