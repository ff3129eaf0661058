"""The seed's first network: conv(1 -> 20, 5x5), ReLU, conv(20 -> 20, 5x5), as printed.

Like the seed, there is no ReLU after ``conv2``. One forward pass on a random ``1x1x32x32`` input, traced and rendered: the
computation graph autograd built (``graph.svg`` and ``graph.png``), with the
module of each node as a cluster and tensor shapes on the edges.

Run::

    python examples/two_conv.py                 # -> out/two_conv/graph.svg, graph.png
    python examples/two_conv.py --run-dir /tmp/two_conv
"""
from __future__ import annotations

import time

import torch

import graphviz_autograd as ga
from graphviz_autograd.examples import _common as common
from graphviz_autograd.examples.models import Net

NAME = "two_conv"


def run(run_dir: str = f"out/{NAME}", *, seed: int = 0, echo=print, formats=("svg", "png"),
        overwrite: bool = False) -> dict:
    """Trace ``Net`` on one input and render its graph.

    Returns:
        dict with ``graph``, ``output_shape``, ``files`` and ``trace_ms``.
    """
    run_dir = common.fresh_dir(run_dir, overwrite, echo, "files")
    torch.manual_seed(seed)
    net = Net()
    x = torch.randn(1, 1, 32, 32)
    t0 = time.perf_counter()
    with ga.instrument(net):                 # module names and source lines on every node
        out = net(x)
    graph = ga.trace(out, model=net)
    trace_ms = (time.perf_counter() - t0) * 1000
    echo(f"Net: input {tuple(x.shape)} -> output {tuple(out.shape)}")
    echo(f"{graph.summary()}, traced in {trace_ms:.0f} ms")
    echo("parameters in the graph: " + ", ".join(
        f"{name} {node.outputs[0].short() if node.outputs and node.outputs[0] else ''}"
        for name, node in sorted(graph.params.items())))
    files = common.render(graph, run_dir, "graph", formats, title="Net: two conv layers")
    for f in files:
        echo(f"wrote {f}")
    return {"graph": graph, "output_shape": tuple(out.shape), "files": files, "trace_ms": trace_ms}


def main(argv=None) -> dict:
    """Command line entry point; see the module docstring."""
    args = common.parser(__doc__, run_dir=f"out/{NAME}", data=False).parse_args(argv)
    return run(args.run_dir, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
