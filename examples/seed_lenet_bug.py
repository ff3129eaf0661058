"""The seed's LeNet as printed (``fc1 = nn.Linear(16*5*5, 120)``, ``x.view(-1, 16*5*5)``) on 28x28 MNIST.

16*5*5 = 400 is right for 32x32 inputs (the original LeNet-5); after two
``conv(5) + max_pool(2)`` stages a 28x28 image is a 16x4x4 = 256 feature map.
What happens then depends on the batch size:

* at the seed's batch size 64, ``x.view(-1, 400)`` fails: 64 * 256 = 16,384 values
  are not a multiple of 400;
* at batch 100 (or 25, 50, 200) nothing fails there: ``view`` silently turns
  (100, 16, 4, 4) into (64, 400), rows that mix the images, and PyTorch only
  complains later that 64 predictions do not match 100 labels (or, if the counts
  happened to fit, trains on mixed-up images without a word).

This example shows both PyTorch errors, then what graphviz-autograd says (the
doctor names the ``view``, its line, both shapes and the fix, and draws the graph
with the culprit marked), and checks both fixes: ``x.flatten(1)`` with
``Linear(16*4*4, 120)``, or padding the input to 32x32.

Run::

    python examples/seed_lenet_bug.py           # -> out/seed_lenet_bug/seed_lenet.svg
    python examples/seed_lenet_bug.py --no-doctor   # plain-text diagnosis, no rich panels
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

import graphviz_autograd as ga
from graphviz_autograd.examples import _common as common
from graphviz_autograd.examples.models import LeNet5, SeedLeNet5

NAME = "seed_lenet_bug"
FAILS, MIXES = 64, 100          # the seed's batch size; one where view silently mixes


def _error(fn) -> str:
    """``"RuntimeError: <first line>"`` of the error ``fn()`` raises."""
    try:
        fn()
    except (RuntimeError, ValueError) as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    raise AssertionError("the seed's LeNet unexpectedly ran without an error")


def run(run_dir: str = f"out/{NAME}", *, use_doctor: bool = True, seed: int = 0, echo=print,
        console=None, overwrite: bool = False) -> dict:
    """Show the errors at batch 64 and 100, the diagnosis, and the two fixes.

    Returns:
        dict with ``error`` (PyTorch's message at batch 64), ``silent`` (the output shape
        at batch 100), ``loss_error`` (PyTorch's message for the loss at batch 100),
        ``diagnosis`` (of batch 100), ``files``, ``fixed_shape`` and ``padded_shape``.
    """
    run_dir = common.fresh_dir(run_dir, overwrite, echo, "files")
    torch.manual_seed(seed)
    model = SeedLeNet5()
    images = {n: torch.randn(n, 1, 28, 28) for n in (FAILS, MIXES)}
    labels = {n: torch.randint(0, 10, (n,)) for n in (FAILS, MIXES)}
    os.makedirs(run_dir, exist_ok=True)
    svg = os.path.join(run_dir, "seed_lenet.svg")
    echo("1. The seed's LeNet-5 (fc1 = Linear(16*5*5, 120), x.view(-1, 16*5*5)) on 28x28 images:")
    error = _error(lambda: model(images[FAILS]))
    echo(f"   batch {FAILS}: PyTorch says: {error}")
    silent = tuple(model(images[MIXES]).shape)
    loss_error = _error(lambda: F.cross_entropy(model(images[MIXES]), labels[MIXES]))
    echo(f"   batch {MIXES}: no error at view; the output has shape {silent} for {MIXES} images,")
    echo(f"     and the loss fails later: {loss_error}")
    echo(f"\n2. What graphviz-autograd says (batch {MIXES}, with the loss):")
    if use_doctor:
        from graphviz_autograd.cli.report import run_doctor

        diagnosis = run_doctor(model, images[MIXES], target=labels[MIXES], svg=svg, console=console)
        files = [svg]
    else:
        diagnosis = ga.diagnose(model, inputs=images[MIXES], target=labels[MIXES])
        echo(str(diagnosis))
        files = [diagnosis.graph.render(svg, highlight=diagnosis.highlight,
                                        title="SeedLeNet5 at batch 100: view mixes the images")]
        echo(f"   wrote {files[0]}")
    echo("\n3. The fixes:")
    torch.manual_seed(seed)
    fixed = LeNet5()
    shapes = {n: tuple(fixed(images[n]).shape) for n in (FAILS, MIXES)}
    echo(f"   x = x.flatten(1) and fc1 = Linear(16*4*4, 120) (examples.models.LeNet5): output "
         f"{shapes[FAILS]} at batch {FAILS}, {shapes[MIXES]} at batch {MIXES}")
    padded = model(F.pad(images[MIXES], (2, 2, 2, 2)))
    echo(f"   the seed's LeNet on inputs padded to 32x32 (transforms.Pad(2)): output "
         f"{tuple(padded.shape)} at batch {MIXES}")
    echo("   either way, flatten with x.flatten(1) or x.view(x.size(0), -1), never view(-1, N): "
         "it keeps the batch dimension, so a wrong size fails at once instead of mixing images.")
    return {"error": error, "silent": silent, "loss_error": loss_error, "diagnosis": diagnosis,
            "files": files, "fixed_shape": shapes[MIXES], "padded_shape": tuple(padded.shape),
            "run_dir": run_dir}


def main(argv=None) -> dict:
    """Command line entry point; see the module docstring."""
    p = common.parser(__doc__, run_dir=f"out/{NAME}", data=False)
    p.add_argument("--no-doctor", action="store_true",
                   help="print the diagnosis as plain text instead of the doctor's panels")
    args = p.parse_args(argv)
    return run(args.run_dir, use_doctor=not args.no_doctor, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
