"""``graphviz-autograd render SPEC --input-shape ...``: trace a model and render its graph."""
from __future__ import annotations

import os
import time

import click

from graphviz_autograd.cli.common import UserCodeError
from graphviz_autograd.errors import GraphvizAutogradError


def _input_option(f):
    return click.option("--input-shape", "input_shape", required=True, metavar="N,C,H,W",
                        help="Shape of a random input batch, e.g. 1,3,224,224.")(f)


@click.command()
@click.argument("spec")
@_input_option
@click.option("-o", "--output", default=None, help="Image path; the suffix (.svg .png .pdf .dot) picks the format.")
@click.option("--depth", type=int, default=None, help="Fold modules deeper than this into one node.")
@click.option("--focus", default=None, metavar="MODULE", help="Draw only this module (and its neighbours).")
@click.option("--show-saved", is_flag=True, help="Draw tensors saved for backward.")
@click.option("--max-nodes", type=int, default=2000, show_default=True,
              help="Fold modules automatically above this many nodes (0: never).")
@click.option("--json", "json_path", default=None, help="Also write the graph as JSON here.")
@click.option("--dtype", default="float32", show_default=True, help="Input dtype.")
def render(spec, input_shape, output, depth, focus, show_saved, max_nodes, json_path, dtype):
    """Trace SPEC (module:callable or file.py:Class) on a random input and render its graph.

    Example: graphviz-autograd render torchvision.models:resnet18 --input-shape 1,3,224,224 -o resnet18.svg
    """
    from graphviz_autograd.cli.modelspec import load_model_spec, parse_shape

    shape = parse_shape(input_shape)        # before importing torch: typos fail at once
    import torch

    from graphviz_autograd.live.instrument import instrument
    from graphviz_autograd.tracer import trace

    model = load_model_spec(spec)
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype) or not (torch_dtype.is_floating_point
                                                        or torch_dtype.is_complex):
        raise click.BadParameter(f"{dtype!r} is not a floating-point torch dtype (try float32, "
                                 "float64)", param_hint="--dtype")
    x = torch.randn(shape, dtype=torch_dtype)
    t0 = time.perf_counter()
    try:
        with instrument(model):
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - any error raised by the user's forward
        if isinstance(exc, GraphvizAutogradError):
            raise
        raise UserCodeError(
            f"the forward pass of {spec} on an input of shape {shape} failed: "
            f"{'' if isinstance(exc, RuntimeError) else type(exc).__name__ + ': '}{exc}. "
            f"Check --input-shape, or run `graphviz-autograd doctor {spec} --input-shape "
            f"{input_shape}` for an explanation.") from None
    graph = trace(out, model=model, show_saved=show_saved)
    t_trace = time.perf_counter() - t0
    output = output or f"{spec.rpartition(':')[2]}.svg"
    t0 = time.perf_counter()
    path = graph.render(output, depth=depth, focus=focus, max_nodes=max_nodes or None)
    t_render = time.perf_counter() - t0
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            f.write(graph.to_json(indent=1))
    click.echo(f"{graph.summary()}; traced in {t_trace * 1000:.0f} ms, rendered in "
               f"{t_render:.1f} s -> {os.path.abspath(path)}")
