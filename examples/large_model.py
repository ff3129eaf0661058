"""Large models: torchvision's ResNet-18 and a small ``nn.Transformer``, traced and rendered.

Both are built with random weights (no download). Each is traced under
:func:`graphviz_autograd.instrument` (module names on every node), then
rendered twice: the full graph, and folded by module depth (ResNet-18 at
depth 1: one node per residual block; the Transformer at depth 3: one node per
attention / feed-forward part of each layer), which is what to look at first. Node
counts and the time of each step are printed.

Run::

    python examples/large_model.py                   # -> out/large_model/*.svg, *.png
    python examples/large_model.py --models transformer --formats svg
"""
from __future__ import annotations

import time

import torch

import graphviz_autograd as ga
from graphviz_autograd.examples import _common as common

NAME = "large_model"


def resnet18():
    """``torchvision.models.resnet18(weights=None)`` and a 1x3x224x224 input."""
    from torchvision.models import resnet18 as build  # noqa: PLC0415 (optional dependency)

    return build(weights=None), (torch.randn(1, 3, 224, 224),)


def transformer():
    """A small ``nn.Transformer`` (d_model 64, 4 heads, 2+2 layers) and a source/target pair."""
    model = torch.nn.Transformer(d_model=64, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                                 dim_feedforward=128, dropout=0.1, batch_first=True)
    return model, (torch.randn(2, 10, 64), torch.randn(2, 8, 64))


MODELS = {"resnet18": resnet18, "transformer": transformer}
DEPTH = {"resnet18": 1, "transformer": 3}   # fold depth that gives a readable overview


def run(run_dir: str = f"out/{NAME}", *, models=tuple(MODELS), formats=("svg", "png"),
        depth: int | None = None, seed: int = 0, echo=print, overwrite: bool = False) -> dict:
    """Trace and render each model, full and folded at ``depth`` (default: :data:`DEPTH`).

    Returns:
        ``{name: {"graph", "nodes", "folded_nodes", "trace_s", "render_s", "files"}}``.
    """
    from graphviz_autograd.graph.fold import fold_depth  # noqa: PLC0415

    run_dir = common.fresh_dir(run_dir, overwrite, echo, "files")
    results = {}
    for name in models:
        fold = depth if depth is not None else DEPTH[name]
        torch.manual_seed(seed)
        model, inputs = MODELS[name]()
        t0 = time.perf_counter()
        with ga.instrument(model):
            out = model(*inputs)
        t_forward = time.perf_counter() - t0
        t0 = time.perf_counter()
        graph = ga.trace(out, model=model)
        t_trace = time.perf_counter() - t0
        folded = fold_depth(graph, fold)
        params = sum(p.numel() for p in model.parameters())
        echo(f"{name}: {params / 1e6:.1f} M parameters; forward {t_forward * 1000:.0f} ms; "
             f"trace {t_trace * 1000:.0f} ms; {graph.summary()}; folded at depth {fold}: {len(folded)} nodes")
        t0 = time.perf_counter()
        files = common.render(graph, run_dir, name, formats, max_nodes=None, title=f"{name}: full graph")
        t_full = time.perf_counter() - t0
        t0 = time.perf_counter()
        files += common.render(graph, run_dir, f"{name}-depth{fold}", formats, depth=fold,
                          title=f"{name}: modules folded at depth {fold}")
        t_folded = time.perf_counter() - t0
        echo(f"  rendered full in {t_full:.1f} s, folded in {t_folded:.1f} s -> {', '.join(files)}")
        results[name] = {"graph": graph, "nodes": len(graph), "folded_nodes": len(folded),
                         "trace_s": t_trace, "render_s": t_full + t_folded, "files": files}
    return results


def main(argv=None) -> dict:
    """Command line entry point; see the module docstring."""
    p = common.parser(__doc__, run_dir=f"out/{NAME}", data=False)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--formats", nargs="+", choices=["svg", "png", "pdf", "dot"], default=["svg", "png"])
    p.add_argument("--depth", type=int, default=None,
                   help="module depth to fold at (default: 1 for resnet18, 3 for transformer)")
    args = p.parse_args(argv)
    return run(args.run_dir, models=args.models, formats=args.formats, depth=args.depth,
               overwrite=args.overwrite)


if __name__ == "__main__":
    main()
