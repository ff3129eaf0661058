"""A dynamic graph: :class:`~examples.models.DynamicNet` applies its hidden layer 1-3 times,
chosen per batch from the data, so autograd builds a different graph from step to step.

The recorder (``every=1``) stores each distinct graph structure once as a
*graph version* and notes which version every step used; this example prints
the versions, the steps that used each, and renders each version
(``graph-v1.svg`` ...) so the difference is visible. The dashboard's graph view
switches version when you move the step slider.

Run::

    python examples/dynamic.py --steps 30
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

import graphviz_autograd as ga
from graphviz_autograd.diagnosis.findings import plural
from graphviz_autograd.examples import _common as common
from graphviz_autograd.examples.models import DynamicNet
from graphviz_autograd.examples.data import load_mnist

NAME = "dynamic"


def _ranges(steps: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    out, start = [], None
    for i, s in enumerate(steps):
        if start is None:
            start = s
        if i + 1 == len(steps) or steps[i + 1] != s + 1:
            out.append(f"{start}" if start == s else f"{start}-{s}")
            start = None
    return ", ".join(out)


def run(steps: int = 30, run_dir: str = f"runs/{NAME}", data_dir: str | None = None, every: int = 1,
        *, seed: int = 0, echo=print, data=None, render: bool = True,
        overwrite: bool = False) -> dict:
    """Train ``DynamicNet`` for ``steps`` steps with the recorder; report the graph versions.

    Returns:
        dict with ``versions`` (list of ``GraphVersion``), ``steps_by_version``
        ``{version: [steps]}``, ``repeats`` ``{version: hidden-layer repeats}``,
        ``files`` and ``run_dir``.
    """
    run_dir = common.fresh_dir(run_dir, overwrite, echo)
    torch.manual_seed(seed)
    data = data or load_mnist(data_dir)
    echo(f"data: {data.source}")
    model = DynamicNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    repeats_at = {}
    with ga.Recorder(model, run_dir, optimizer=optimizer, every=every, overwrite=overwrite,
                     meta={"example": NAME}) as rec:
        loader = common.loader(data.train, 64, seed)
        batches = (batch for _epoch in itertools.count() for batch in loader)   # epochs until `steps`
        for step, (x, y) in zip(range(steps), batches):
            repeats_at[step] = model.repeats(x)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            rec.log(step, loss=loss, repeats=repeats_at[step])
    by_version: dict[int, list[int]] = {}
    repeats: dict[int, int] = {}
    files: list[str] = []
    with ga.open_run(run_dir) as r:
        versions = r.graph_versions()
        for step in r.loss().steps:
            v = r.version_at(step)
            by_version.setdefault(v, []).append(step)
            repeats.setdefault(v, repeats_at[step])
        echo(f"{plural(len(versions), 'graph version')} in {plural(len(repeats_at), 'step')} "
             f"(recorded every {every}):")
        for gv in versions:
            used = by_version.get(gv.version, [])
            echo(f"  version {gv.version}: {plural(gv.n_nodes, 'node')}, hidden layer applied "
                 f"{repeats.get(gv.version, '?')}x, first at step {gv.first_step}, "
                 f"used by {plural(len(used), 'step')}: {_ranges(used)}")
            if render:
                files.extend(common.render(r.graph(gv.version), run_dir, f"graph-v{gv.version}", ("svg",),
                                      title=f"DynamicNet, graph version {gv.version}"))
    if files:
        echo(f"graphs: {', '.join(files)}")
    return {"versions": versions, "steps_by_version": by_version, "repeats": repeats,
            "files": files, "run_dir": run_dir}


def main(argv=None) -> dict:
    """Command line entry point; see the module docstring."""
    p = common.parser(__doc__, run_dir=f"runs/{NAME}", every=1)
    p.add_argument("--steps", type=common.positive_int, default=30, help="training steps (default: 30)")
    args = p.parse_args(argv)
    return run(args.steps, args.run_dir, args.data_dir, args.every, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
