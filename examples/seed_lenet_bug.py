"""The seed's LeNet as printed (``fc1 = nn.Linear(16 * 5 * 5, 120)``) fails on 28x28 MNIST.

16*5*5 = 400 is right for 32x32 inputs (the original LeNet-5); after two
``conv(5) + max_pool(2)`` stages a 28x28 image is a 16x4x4 = 256 feature map.
PyTorch stops with ``mat1 and mat2 shapes cannot be multiplied (4x256 and
400x120)``; this example catches that error, then shows what graphviz-autograd
says: the doctor names the layer, the flatten that made the 256 and the fix,
and draws the partial graph (what ran before the error) with the culprit marked.
Finally it checks both fixes: ``Linear(16 * 4 * 4, 120)``, or padding the input
to 32x32.

Run::

    python examples/seed_lenet_bug.py           # -> out/seed_lenet_bug/seed_lenet.svg
    python examples/seed_lenet_bug.py --no-doctor   # raw error + partial graph only
"""
from __future__ import annotations

import os
import sys


import torch
import torch.nn.functional as F

import graphviz_autograd as ga
from graphviz_autograd.examples import _common as common
from graphviz_autograd.examples.models import LeNet5, SeedLeNet5

NAME = "seed_lenet_bug"


def partial_graph(model: torch.nn.Module, x: torch.Tensor):
    """Run ``model(x)`` expecting it to fail; trace the input of the last submodule called.

    That submodule is the one that failed (or the last one before a failing
    functional op). Returns ``(error, graph, module_name, input_shape)``;
    ``graph`` is None when nothing with a graph reached a submodule.
    """
    last: dict = {}

    def pre(name):
        return lambda _m, args: last.update(name=name, inp=args[0] if args else None)
    handles = [m.register_forward_pre_hook(pre(name))
               for name, m in model.named_modules() if name and next(m.children(), None) is None]
    error = None
    try:
        with ga.instrument(model):
            model(x)
    except RuntimeError as exc:
        error = exc
    finally:
        for h in handles:
            h.remove()
    inp = last.get("inp")
    ok = isinstance(inp, torch.Tensor) and inp.grad_fn is not None
    graph = ga.trace(inp, model=model) if ok else None
    return error, graph, last.get("name"), tuple(inp.shape) if ok else None


def run(run_dir: str = f"out/{NAME}", *, use_doctor: bool = True, seed: int = 0, echo=print,
        console=None) -> dict:
    """Show the error, the diagnosis (or the raw partial graph) and the two fixes.

    Returns:
        dict with ``error`` (PyTorch's message), ``diagnosis`` (None without the
        doctor), ``files``, ``fixed_shape`` and ``padded_shape``.
    """
    torch.manual_seed(seed)
    model, x, y = SeedLeNet5(), torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    os.makedirs(run_dir, exist_ok=True)
    svg = os.path.join(run_dir, "seed_lenet.svg")
    echo("1. The seed's LeNet-5 (fc1 = Linear(16*5*5, 120)) on a batch of 28x28 MNIST images:")
    try:
        model(x)
        raise AssertionError("SeedLeNet5 unexpectedly accepted a 28x28 input")
    except RuntimeError as exc:
        error = str(exc).strip().splitlines()[0]
    echo(f"   PyTorch says: RuntimeError: {error}")
    echo("\n2. What graphviz-autograd says:")
    diagnosis, files = None, []
    run_doctor = diagnose = None
    if use_doctor:
        try:
            from graphviz_autograd.cli.report import run_doctor
        except ImportError:
            try:
                from graphviz_autograd.diagnosis import diagnose
            except ImportError:
                pass
    if run_doctor is not None:
        diagnosis = run_doctor(model, x, target=y, svg=svg, console=console)
        files.append(svg)
    elif diagnose is not None:
        diagnosis = diagnose(model, inputs=x, target=y)
        echo(str(diagnosis))
        files.append(diagnosis.graph.render(svg, highlight=diagnosis.highlight, title="SeedLeNet5"))
    else:
        _error, graph, name, shape = partial_graph(model, x)
        echo(f"   the forward pass failed in module `{name}` ({getattr(model, name, '?')}) on an "
             f"input of shape {shape}; the graph of what ran up to there:")
        if graph is not None:
            echo(f"   {graph.summary()}")
            files.append(graph.render(svg, title=f"SeedLeNet5: what ran before `{name}` failed"))
    if run_doctor is None:
        for f in files:
            echo(f"   wrote {f}")
    echo("\n3. The fixes:")
    torch.manual_seed(seed)
    fixed = LeNet5()(x)
    echo(f"   LeNet5 with fc1 = Linear(16*4*4, 120) on 28x28: output {tuple(fixed.shape)}")
    padded = SeedLeNet5()(F.pad(x, (2, 2, 2, 2)))
    echo(f"   the seed's LeNet on inputs padded to 32x32 (transforms.Pad(2)): output {tuple(padded.shape)}")
    return {"error": error, "diagnosis": diagnosis, "files": files,
            "fixed_shape": tuple(fixed.shape), "padded_shape": tuple(padded.shape)}


def main(argv=None) -> dict:
    """Command line entry point; see the module docstring."""
    p = common.parser(__doc__, run_dir=f"out/{NAME}", data=False)
    p.add_argument("--no-doctor", action="store_true",
                   help="skip the doctor: print the raw error and the partial graph")
    args = p.parse_args(argv)
    return run(args.run_dir, use_doctor=not args.no_doctor)


if __name__ == "__main__":
    main()
