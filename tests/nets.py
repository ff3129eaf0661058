"""Small real models used across the tests."""
import torch
import torch.nn.functional as F


from graphviz_autograd.examples.models import LeNet5  # noqa: E402  (the same network the examples train)


class Square(torch.autograd.Function):
    """A custom autograd.Function that saves its input: y = x**2."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


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
