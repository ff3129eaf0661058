"""``graphviz-autograd doctor MODEL_SPEC --input-shape ...``: diagnose gradient flow."""
from __future__ import annotations

import sys

import click

from graphviz_autograd.cli.common import UserCodeError
from graphviz_autograd.diagnosis.findings import quote
from graphviz_autograd.errors import GraphvizAutogradError


@click.command()
@click.argument("spec")
@click.option("--input-shape", "input_shape", required=True, multiple=True, metavar="N,C,H,W",
              help="Shape of a random input batch, e.g. 1,1,28,28 (repeat for several inputs).")
@click.option("--classes", type=int, default=None,
              help="Use cross-entropy against random labels in [0, CLASSES) as the loss "
                   "(default: MSE against a fixed random target).")
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
        diagnosis = run_doctor(model, inputs, target=target, svg=svg)
    except GraphvizAutogradError:
        raise
    except Exception as exc:  # noqa: BLE001 - an error raised by the user's model, not a finding
        raise UserCodeError(f"running {spec} on inputs of shape {', '.join(map(str, shapes))} "
                            f"failed with {type(exc).__name__}: {quote(str(exc))}. Fix the model, or check "
                            "--input-shape") from None
    sys.exit(exit_code(diagnosis))
