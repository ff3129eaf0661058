"""Small real models used across the tests."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class LeNet5(nn.Module):
    """LeNet-5 for 28x28 MNIST (the correct 16*4*4 flatten)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def lenet_loss(net=None, batch=4, seed=0):
    torch.manual_seed(seed)
    net = net or LeNet5()
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    return net, F.cross_entropy(net(x), y)


def reference_walk(outputs):
    """An independent next_functions walk: (node set, edge set) keyed by the Python objects."""
    if isinstance(outputs, torch.Tensor):
        outputs = [outputs]
    nodes, edges = set(), set()
    stack = [t.grad_fn for t in outputs]
    while stack:
        fn = stack.pop()
        if fn in nodes:
            continue
        nodes.add(fn)
        for k, (nxt, nr) in enumerate(fn.next_functions):
            if nxt is not None:
                edges.add((nxt, fn, nr, k))
                stack.append(nxt)
    return nodes, edges
