"""A zoo of small, deliberately broken (and a few healthy) models.

Each ``make_*`` function returns a :class:`Case`: the model, its inputs and
target. Lines the diagnosis must point at carry a ``# zoo: <marker>`` comment;
:func:`line_of` finds them, so tests do not hard-code line numbers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

FILE = os.path.basename(__file__)


def line_of(marker: str) -> str:
    """``zoo.py:<line>`` of the line tagged ``# zoo: <marker>``."""
    with open(__file__, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.rstrip().endswith(f"# zoo: {marker}"):
                return f"{FILE}:{i}"
    raise KeyError(marker)


@dataclass
class Case:
    model: nn.Module
    inputs: Any
    target: Any = None
    loss_fn: Callable | None = None


def _seed(seed: int = 0) -> None:
    torch.manual_seed(seed)


# -- healthy -----------------------------------------------------------------------
class LeNet5(nn.Module):
    """LeNet-5 as written for 32x32 inputs (16*5*5 features before fc1)."""

    def __init__(self, flat: int = 16 * 5 * 5, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(flat, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)  # zoo: lenet-flatten
        x = F.relu(self.fc1(x))  # zoo: lenet-fc1
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def make_lenet(batch: int = 4) -> Case:
    _seed()
    return Case(LeNet5(), torch.randn(batch, 1, 32, 32), torch.randint(0, 10, (batch,)))


def make_seed_lenet(batch: int = 1) -> Case:
    """The seed's LeNet: written for 32x32 (16*5*5) but fed 28x28 MNIST images."""
    _seed()
    return Case(LeNet5(), torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,)))


class ViewLeNet(LeNet5):
    """Tutorial-style LeNet that flattens with view(-1, 16*5*5)."""

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, 16 * 5 * 5)  # zoo: view-lenet
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


# -- unused parameters -------------------------------------------------------------
class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(x + out.detach())  # zoo: residual-detach


class DetachedResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = ResidualBlock(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.block(F.relu(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make_detached_residual() -> Case:
    _seed()
    return Case(DetachedResNet(), torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,)))


class WeightNormLinear(nn.Module):
    """A hand-written weight-normalised linear layer that reads ``.data`` by mistake."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in ** 0.5)
        self.gain = nn.Parameter(torch.ones(n_out, 1))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        w = self.weight.data  # zoo: data-use
        w = self.gain * w / w.norm(dim=1, keepdim=True)
        return F.linear(x, w, self.bias)


def make_data_use() -> Case:
    _seed()
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), WeightNormLinear(12, 3))
    return Case(model, torch.randn(8, 6), torch.randint(0, 3, (8,)))


class AuxBranchNet(nn.Module):
    """Adds an auxiliary refinement only for large batches: never taken in the test."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(10, 16)
        self.refine = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        h = F.relu(self.body(x))
        if x.shape[0] > 64:
            h = h + self.refine(h)  # zoo: branch-call
        return self.head(h)


def make_branch_not_taken() -> Case:
    _seed()
    return Case(AuxBranchNet(), torch.randn(8, 10), torch.randint(0, 2, (8,)))


class HardRoutingNet(nn.Module):
    """Picks one of K prototypes with argmax and classifies its embedding."""

    def __init__(self, k: int = 6):
        super().__init__()
        self.router = nn.Linear(12, k)
        self.prototypes = nn.Embedding(k, 16)
        self.classifier = nn.Linear(16, 3)

    def forward(self, x):
        choice = self.router(x).argmax(dim=1)  # zoo: argmax
        return self.classifier(self.prototypes(choice))


def make_argmax() -> Case:
    _seed()
    return Case(HardRoutingNet(), torch.randn(8, 12), torch.randint(0, 3, (8,)))


class FrozenFeaturesNet(nn.Module):
    """Meant to fine-tune the head only, but 'freezes' the backbone with no_grad
    while its parameters still require grad."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        with torch.no_grad():
            feats = self.backbone(x)  # zoo: no-grad
        return self.head(feats.mean(dim=(2, 3)))


def make_no_grad() -> Case:
    _seed()
    return Case(FrozenFeaturesNet(), torch.randn(2, 3, 10, 10), torch.randint(0, 4, (2,)))


# -- non-finite --------------------------------------------------------------------
class LogFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16)

    def forward(self, x):
        return torch.log(F.relu(self.fc(x)))  # zoo: log-relu


def make_log_relu() -> Case:
    _seed()
    return Case(nn.Sequential(LogFeatures(), nn.Linear(16, 2)), torch.randn(8, 8),
                torch.randint(0, 2, (8,)))


class LengthFeature(nn.Module):
    """Appends the Euclidean length of a projection; the projection of a zero row is 0."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 4, bias=False)
        self.out = nn.Linear(5, 1)

    def forward(self, x):
        p = self.proj(x)
        length = p.pow(2).sum(dim=1, keepdim=True).sqrt()  # zoo: sqrt
        return self.out(torch.cat([p, length], dim=1))


def make_sqrt_zero() -> Case:
    _seed()
    x = torch.randn(4, 6)
    x[1] = 0.0                    # e.g. a padding row
    return Case(LengthFeature(), x, torch.randn(4, 1))


# -- gradient scale ----------------------------------------------------------------
def make_huge_init() -> Case:
    _seed()
    layers = [nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)]
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=10.0)        # instead of ~1/sqrt(fan_in)
    return Case(nn.Sequential(*layers), torch.randn(8, 32), torch.randint(0, 10, (8,)))


def make_sigmoid_stack(depth: int = 20) -> Case:
    _seed()
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    return Case(nn.Sequential(*layers, nn.Linear(16, 4)), torch.randn(8, 16),
                torch.randint(0, 4, (8,)))


class DeadMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 32)
        self.fc2 = nn.Linear(32, 3)
        nn.init.constant_(self.fc1.bias, -100.0)       # every pre-activation is < 0

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))  # zoo: dead-relu


def make_dead_relu() -> Case:
    _seed()
    return Case(DeadMLP(), torch.randn(16, 10), torch.randint(0, 3, (16,)))


def make_saturated_tanh() -> Case:
    _seed()
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    nn.init.normal_(model[0].weight, std=50.0)
    return Case(model, torch.randn(16, 8), torch.randint(0, 2, (16,)))


# -- in-place ----------------------------------------------------------------------
class GatedMLP(nn.Module):
    """Copy-pasted from a ReLU network: the in-place ReLU after a sigmoid gate."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.gate = nn.Sequential(nn.Linear(8, 8), nn.Sigmoid(), nn.ReLU(inplace=True))
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.fc(x)
        g = self.gate(h)  # zoo: inplace-gate
        return self.out(h * g)


def make_inplace_relu() -> Case:
    _seed()
    return Case(GatedMLP(), torch.randn(4, 8), torch.randint(0, 2, (4,)))


class InplaceMethodNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)

    def forward(self, x):
        y = self.fc(x).sigmoid()  # zoo: method-sigmoid
        y.relu_()  # zoo: method-relu_
        return y


class AuxHeadNet(nn.Module):
    """Computes an auxiliary head but forgets to return it."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.main_head = nn.Linear(8, 2)
        self.aux_head = nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.body(x))
        aux = self.aux_head(h)  # zoo: aux-head
        return self.main_head(h)


def make_discarded_head() -> Case:
    _seed()
    return Case(AuxHeadNet(), torch.randn(4, 6), torch.randint(0, 2, (4,)))
