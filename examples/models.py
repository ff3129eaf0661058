"""The networks of the seed text (an introductory PyTorch tutorial), written correctly."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    """The seed's first network as printed: conv(1 -> 20, 5x5), ReLU, conv(20 -> 20, 5x5).

    Like the seed, there is no ReLU after ``conv2``: the output is the raw convolution
    (a linear layer's output, as a regression target in the seed's backward example).
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 20, 5)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        return self.conv2(x)


class LeNet5(nn.Module):
    """LeNet-5 for 28x28 MNIST. After two conv(5)+pool(2) stages the map is 16x4x4 = 256."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class SeedLeNet5(nn.Module):
    """The seed's LeNet as printed: ``fc1 = nn.Linear(16*5*5, 120)`` and ``x.view(-1, 16*5*5)``.

    Right for 32x32 inputs (the original LeNet-5), wrong for 28x28 MNIST, where the
    map before ``fc1`` is 16x4x4 = 256 per image. ``view(-1, 400)`` then either fails
    (batch 64: 16,384 values are not a multiple of 400) or, worse, silently packs the
    batch into fewer rows of 400 (batch 100 -> 64 rows that mix images). Kept as
    printed to show what the doctor says; :class:`LeNet5` is the fixed network.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


class LeNet5BN(nn.Module):
    """LeNet-5 with BatchNorm after each convolution and Dropout before the classifier."""

    def __init__(self, num_classes: int = 10, p: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.drop = nn.Dropout(p)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = torch.flatten(x, 1)
        x = self.drop(F.relu(self.fc1(x)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5Softmax(LeNet5):
    """LeNet-5 whose forward ends in softmax (probabilities); train it with NLLLoss on their log."""

    def forward(self, x):
        return F.softmax(super().forward(x), dim=1)


class DynamicNet(nn.Module):
    """A data-dependent graph: the hidden layer is applied 1-3 times, chosen per batch
    from the batch's mean intensity, so the autograd graph changes between steps."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.inp = nn.Linear(28 * 28, 64)
        self.hidden = nn.Linear(64, 64)
        self.out = nn.Linear(64, num_classes)

    def repeats(self, x) -> int:
        return 1 + int(x.detach().abs().mean().item() * 1000) % 3

    def forward(self, x):
        n = self.repeats(x)
        h = F.relu(self.inp(torch.flatten(x, 1)))
        for _ in range(n):
            h = F.relu(self.hidden(h))
        return self.out(h)
