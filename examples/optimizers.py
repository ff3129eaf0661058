"""Backward and the optimizers: SGD, SGD with momentum and Adam on one fixed problem.

The seed's lesson: ``loss = MSELoss()(net(input), target)``, ``loss.backward()``
fills ``.grad`` (after ``zero_grad()``, or gradients add up), and
``optimizer.step()`` updates the weights with ``SGD(lr=0.01)``. Here the same
``Net`` (same initial weights, same input, same fixed target) is trained with
three optimizers, each recorded with ``every=1`` into its own run
(``runs/optimizers/sgd``, ``.../momentum``, ``.../adam``). It prints the update
rule of SGD and of SGD with momentum, a table of losses and of the update/parameter
ratio ``||w_after - w_before|| / ||w_before||`` (about 1e-3 is healthy; much smaller
learns slowly, much larger is unstable), and writes ``loss.svg``: the three loss
curves overlaid. The dashboard overlays them too (``?runs=sgd,momentum,adam``).

Run::

    python examples/optimizers.py --steps 30
    graphviz-autograd dashboard runs/optimizers     # http://127.0.0.1:8050/?runs=sgd,momentum,adam
"""
from __future__ import annotations

import math
import os

import torch

import graphviz_autograd as ga
from graphviz_autograd.diagnosis.findings import plural
from graphviz_autograd.diagnosis.update_rules import update_rule
from graphviz_autograd.examples import _common as common
from graphviz_autograd.examples._figure import line_chart
from graphviz_autograd.examples.models import Net

NAME = "optimizers"
OPTIMIZERS = {
    "sgd": ("SGD lr=0.01", lambda p: torch.optim.SGD(p, lr=0.01)),
    "momentum": ("SGD lr=0.01 momentum=0.9", lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)),
    "adam": ("Adam lr=0.001", lambda p: torch.optim.Adam(p, lr=0.001)),
}


def _show_backward(net, x, target, echo) -> None:
    """The seed's demonstration: what backward does to ``conv1.bias.grad``."""
    criterion = torch.nn.MSELoss()
    loss = criterion(net(x), target)
    fn = loss.grad_fn
    echo(f"loss = {loss.item():.4f}; loss.grad_fn = {type(fn).__name__} -> "
         f"{type(fn.next_functions[0][0]).__name__} -> "
         f"{type(fn.next_functions[0][0].next_functions[0][0]).__name__}")
    net.zero_grad()
    echo(f"conv1.bias.grad before backward: {net.conv1.bias.grad}")
    loss.backward()
    echo(f"conv1.bias.grad after backward:  {net.conv1.bias.grad[:4].tolist()} ... (20 values)")
    net.zero_grad()


def run(steps: int = 30, run_dir: str = f"runs/{NAME}", *, seed: int = 0, echo=print,
        overwrite: bool = False) -> dict:
    """Train ``Net`` on a fixed target with each optimizer, one recorded run each.

    A previous comparison in ``run_dir`` is kept (this one goes to ``run_dir-2`` ...)
    unless ``overwrite``. Writes ``loss.svg`` there: the three loss curves overlaid.

    Returns:
        dict ``{"runs": {name: run_dir}, "first_loss", "final_loss", "losses": {name: [...]},
        "update_ratio": {name: mean update/param ratio of conv1.weight}, "figure": path}``.
    """
    run_dir = common.fresh_dir(run_dir, overwrite, echo, "a comparison")
    torch.manual_seed(seed)
    x = torch.randn(1, 1, 32, 32)
    target = torch.randn(1, 20, 24, 24)            # a fixed (random) target, as in the seed
    criterion = torch.nn.MSELoss()
    runs, first, final, ratios, losses = {}, {}, {}, {}, {}
    for name, (label, make) in OPTIMIZERS.items():
        torch.manual_seed(seed + 1)                # the same initial weights for every optimizer
        net = Net()
        if name == "sgd":
            _show_backward(net, x, target, echo)
        optimizer = make(net.parameters())
        path = os.path.join(run_dir, name)
        meta = {"example": NAME, "optimizer_label": label,
                "optimizer_settings": common.optimizer_settings(optimizer)}
        with ga.Recorder(net, path, optimizer=optimizer, every=1, overwrite=overwrite,
                         meta=meta) as rec:
            curve = []
            for step in range(steps):
                optimizer.zero_grad()              # else gradients accumulate across steps
                loss = criterion(net(x), target)
                loss.backward()
                optimizer.step()
                rec.log(step, loss=loss)
                curve.append(loss.item())
        first[name], final[name], losses[name] = curve[0], curve[-1], curve
        with ga.open_run(path) as r:
            values = [v for v in r.param_series("conv1.weight", "update_ratio").values
                      if v is not None and math.isfinite(v)]
        ratios[name] = sum(values) / len(values) if values else math.nan
        runs[name] = path
    echo("")
    for name in ("sgd", "momentum"):
        title, lines = update_rule("SGD", common.optimizer_settings(
            OPTIMIZERS[name][1]([torch.zeros(1, requires_grad=True)])), param="w")
        echo(f"{title}:")
        for line in lines:
            echo(f"    {line}")
    echo("")
    echo(f"{'optimizer':<28} {'first loss':>10} {'final loss':>10} {'update/param (conv1.weight)':>28}")
    for name, (label, _) in OPTIMIZERS.items():
        echo(f"{label:<28} {first[name]:>10.4f} {final[name]:>10.4f} {ratios[name]:>28.2e}")
    figure = os.path.join(run_dir, "loss.svg")
    with open(figure, "w", encoding="utf-8") as f:
        f.write(line_chart({OPTIMIZERS[n][0]: losses[n] for n in OPTIMIZERS},
                           title=f"The seed's Net, one fixed target: loss per step ({steps} steps)",
                           ylabel="MSE loss", log=False,
                           notes={OPTIMIZERS[n][0]: f"mean update/param {ratios[n]:.1e}"
                                  for n in OPTIMIZERS}))
    echo(f"\n{plural(steps, 'step')} each; runs in {run_dir}/{{{','.join(OPTIMIZERS)}}}")
    echo(f"figure (the three loss curves overlaid): {figure}")
    echo(f"compare them in the dashboard: graphviz-autograd dashboard {run_dir}")
    echo(f"  then open http://127.0.0.1:8050/?runs={','.join(OPTIMIZERS)}  (the curves overlaid)")
    return {"runs": runs, "first_loss": first, "final_loss": final, "losses": losses,
            "update_ratio": ratios, "figure": figure, "run_dir": run_dir}


def main(argv=None) -> dict:
    """Command line entry point; see the module docstring."""
    p = common.parser(__doc__, run_dir=f"runs/{NAME}", data=False)
    p.add_argument("--steps", type=common.positive_int, default=30, help="steps per optimizer (default: 30)")
    args = p.parse_args(argv)
    return run(args.steps, args.run_dir, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
