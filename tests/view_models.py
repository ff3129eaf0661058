"""Real graphs of the sizes the views must handle, traced once per test process (no downloads).

* ``resnet18_graph()``: torchvision resnet18, 134 nodes;
* ``bert_graph()``: a 4-layer ``nn.TransformerEncoder`` with an embedding and a head, 233
  nodes (181 autograd ops, like the BERT of the issue);
* ``detection_graph()``: torchvision ``fasterrcnn_mobilenet_v3_large_fpn`` (``weights=None``,
  ``weights_backbone=None``) in training mode with one target, 452 nodes and 192 parameters.
"""
from __future__ import annotations

import functools

import graphviz_autograd as ga


@functools.lru_cache(maxsize=None)
def resnet18_graph() -> ga.Graph:
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    with ga.instrument(net):
        out = net(torch.randn(1, 3, 224, 224))
    return ga.trace(out.sum(), model=net)


class TinyBert:
    """A BERT-like encoder: embedding, 4 transformer layers, a classification head."""

    def __new__(cls):
        import torch.nn as nn

        class Bert(nn.Module):
            def __init__(self):
                super().__init__()
                layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128,
                                                   dropout=0.0, batch_first=True)
                self.embed = nn.Embedding(100, 64)
                self.encoder = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)
                self.head = nn.Linear(64, 2)

            def forward(self, x):
                return self.head(self.encoder(self.embed(x))[:, 0])
        return Bert()


@functools.lru_cache(maxsize=None)
def bert_graph() -> ga.Graph:
    import torch

    torch.manual_seed(0)
    net = TinyBert()
    with ga.instrument(net):
        out = net(torch.randint(0, 100, (2, 16)))
    return ga.trace(out.sum(), model=net)


def detection_model():
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=5)
    model.train()
    images = [torch.rand(3, 224, 224)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 100.0, 120.0]]), "labels": torch.tensor([1])}]
    return model, images, targets


@functools.lru_cache(maxsize=None)
def detection_graph() -> ga.Graph:
    model, images, targets = detection_model()
    with ga.instrument(model):
        losses = model(images, targets)
    return ga.trace(sum(losses.values()), model=model)
