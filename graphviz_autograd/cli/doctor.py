"""``graphviz-autograd doctor MODEL_SPEC --input-shape ...``: diagnose gradient flow."""
from __future__ import annotations

import sys

import click

from graphviz_autograd.cli.common import UserCodeError
from graphviz_autograd.diagnosis.findings import quote
from graphviz_autograd.errors import GraphvizAutogradError


def mean_square(output):
    """The doctor's loss without --classes: the mean of the squared float outputs (a mean, so
    the gradients have the scale of a real loss's, whatever the output size)."""
    import torch

    leaves = [t for t in torch.utils._pytree.tree_leaves(output)
              if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return sum(t.pow(2).mean() for t in leaves)


@click.command()
@click.argument("spec")
@click.option("--input-shape", "input_shape", required=True, multiple=True, metavar="N,C,H,W",
              help="Shape of a random input batch, e.g. 1,1,28,28 (repeat for several inputs).")
@click.option("--classes", type=int, default=None,
              help="Use cross-entropy against random labels in [0, CLASSES) as the loss "
                   "(default: mean of squared outputs).")
@click.option("--svg", default=None, help="Write the graph with the findings marked to this file.")
def doctor(spec, input_shape, classes, svg):
    """Run SPEC once forward and backward and report why gradients would not flow.

    Exit code 1 when a finding of severity "error" is reported.
    """
    from graphviz_autograd.cli.modelspec import load_model_spec, make_inputs, parse_shape

    shapes = [parse_shape(s) for s in input_shape]   # before importing torch: typos fail at once
    import torch

    from graphviz_autograd.cli.report import exit_code, run_doctor

    model = load_model_spec(spec)
    inputs = make_inputs(shapes)
    target = torch.randint(0, classes, (shapes[0][0],)) if classes else None
    try:
        diagnosis = run_doctor(model, inputs, target=target, svg=svg,
                               loss_fn=None if classes else mean_square)
    except GraphvizAutogradError:
        raise
    except Exception as exc:  # noqa: BLE001 - an error raised by the user's model, not a finding
        raise UserCodeError(f"running {spec} on inputs of shape {', '.join(map(str, shapes))} "
                            f"failed with {type(exc).__name__}: {quote(str(exc))}. Fix the model, or check "
                            "--input-shape") from None
    sys.exit(exit_code(diagnosis))
