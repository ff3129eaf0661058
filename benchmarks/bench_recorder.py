"""Recording overhead vs a plain training step, measured side by side in one process.

Usage: python benchmarks/bench_recorder.py [--steps N] [--model lenet|resnet18] [--batch B]
Prints each configuration's mean step time and its ratio to the plain step (median over rounds).
Each configuration trains its own copy of the model; steps are interleaved one by one
across configurations, in an order that rotates each step, so machine noise hits all alike.
A second plain configuration is a control: its ratio to the first shows the noise floor.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import graphviz_autograd as ga  # noqa: E402
from graphviz_autograd.examples.models import LeNet5  # noqa: E402

CONFIGS = {
    "plain": None,
    "plain again (control)": None,
    "params every step": dict(every=1, record=("params",)),
    "params+nodes every step": dict(every=1, record=("params", "nodes")),
    "all every step": dict(every=1),
    "default (every=50)": dict(),
}


def make(model_name: str):
    if model_name == "resnet18":
        import torchvision
        return torchvision.models.resnet18(num_classes=10), (3, 224, 224)
    return LeNet5(), (1, 28, 28)


def run(model_name: str, steps: int, batch: int, rounds: int, warmup: int = 10) -> dict[str, list[list[float]]]:
    """Step times per configuration and round; each configuration trains its own copy of the model.

    Steps are interleaved one by one across configurations (plain, then each
    recorder), so a noisy moment hits all of them alike. A round starts fresh
    recorders and times ``steps`` steps after ``warmup`` untimed ones (which
    include the first trace of the graph).
    """
    torch.manual_seed(0)
    base, shape = make(model_name)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    times: dict[str, list[list[float]]] = {k: [] for k in CONFIGS}
    tmp = tempfile.mkdtemp()
    copies = [copy.deepcopy(base) for _ in CONFIGS]
    copy_opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in copies]
    models, opts = {}, {}

    def step(name):
        model, opt = models[name], opts[name]
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for r in range(rounds):
        # Each round hands the model copies to the configurations in a rotated order:
        # where a copy's tensors land in memory made one plain copy 3% slower than
        # another for a whole run, so no configuration may keep one copy.
        for k, name in enumerate(CONFIGS):
            j = (k + r) % len(copies)
            models[name], opts[name] = copies[j], copy_opts[j]
        if r == 0:
            for name in CONFIGS:
                for _ in range(3):
                    step(name)
        recs = {}
        try:
            for name, cfg in CONFIGS.items():
                if cfg is not None:
                    recs[name] = ga.Recorder(models[name], os.path.join(tmp, f"{r}-{name}"),
                                             optimizer=opts[name], overwrite=True, **cfg)
            for name in CONFIGS:
                times[name].append([])
            names = list(CONFIGS)
            for i in range(warmup + steps):
                # rotate the order each step: whichever configuration runs first after
                # another one measured up to 5% slower (caches, allocator), so none may
                # always hold the same place
                k = i % len(names)
                for name in names[k:] + names[:k]:
                    rec = recs.get(name)
                    t0 = time.perf_counter()
                    loss = step(name)
                    if rec is not None:
                        rec.log(i, loss=loss)
                    if i >= warmup:
                        times[name][-1].append(time.perf_counter() - t0)
        finally:
            for rec in recs.values():
                rec.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet", choices=["lenet", "resnet18"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=6,
                    help="rounds; a multiple of the 6 configurations gives each every model copy")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps at the start of each round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    times = run(args.model, args.steps, args.batch, args.rounds, args.warmup)
    print(f"{args.model}, batch {args.batch}, {args.rounds} rounds x {args.steps} timed steps, "
          f"{torch.get_num_threads()} threads")
    # A round's mean step time counts the steps that record and the ones that do not
    # (a median would hide the default's recorded steps); the ratio is taken inside each
    # round (same moment, same noise) and its median over rounds is reported.
    means = {name: [statistics.mean(r) for r in rounds] for name, rounds in times.items()}
    print(f"{'configuration':28s} {'mean ms':>8s} {'ratio':>7s} {'ratio range':>14s}")
    for name, ms in means.items():
        ratios = [m / p for m, p in zip(ms, means["plain"])]
        print(f"{name:28s} {statistics.median(ms) * 1000:8.2f} {statistics.median(ratios):7.3f} "
              f"{min(ratios):6.3f}-{max(ratios):.3f}")


if __name__ == "__main__":
    main()
