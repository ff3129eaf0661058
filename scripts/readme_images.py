"""Regenerate the pictures in docs/ that the README shows (all made by the tool itself).

Usage: .venv/bin/python scripts/readme_images.py
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import graphviz_autograd as ga  # noqa: E402
from graphviz_autograd.examples.models import LeNet5  # noqa: E402

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs")


def main():
    torch.manual_seed(0)
    net = LeNet5()
    with ga.instrument(net):
        loss = F.cross_entropy(net(torch.randn(64, 1, 28, 28)), torch.randint(0, 10, (64,)))
    graph = ga.trace(loss, model=net)
    print(graph.render(os.path.join(DOCS, "lenet5.png")))
    import torchvision
    res = torchvision.models.resnet18()
    with ga.instrument(res):
        out = res(torch.randn(1, 3, 224, 224))
    print(ga.trace(out, model=res).render(os.path.join(DOCS, "resnet18.png")))


if __name__ == "__main__":
    main()
