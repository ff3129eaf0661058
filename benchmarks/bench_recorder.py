"""Recording overhead vs a plain training step, measured side by side in one process.

Usage: python benchmarks/bench_recorder.py [--steps N] [--model lenet|resnet18|mlp] [--batch B]
    [--precision fp32,bf16] [--configs "plain,all every step"]
Prints each configuration's mean step time and its ratio to the plain step of the same precision
(median over rounds). ``--precision fp32,bf16`` runs every configuration in float32 and under
``torch.autocast("cpu", dtype=torch.bfloat16)``, interleaved in the same run.
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


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make(model_name: str):
    if model_name == "resnet18":
        import torchvision
        return torchvision.models.resnet18(num_classes=10), (3, 224, 224)
    if model_name == "mlp":     # 4x Linear(512): issue 14's mixed-precision case
        layers = []
        for _ in range(3):
            layers += [torch.nn.Linear(512, 512), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers, torch.nn.Linear(512, 10)), (512,)
    return LeNet5(), (1, 28, 28)


def expand(names: list[str], precisions: list[str]) -> dict[str, tuple]:
    """``{label: (recorder options or None, precision)}``: each configuration in each precision
    (labels get a `` [bf16]`` suffix when more than one precision runs)."""
    out = {}
    for prec in precisions:
        for name in names:
            label = name if len(precisions) == 1 else f"{name} [{prec}]"
            out[label] = (CONFIGS[name], prec)
    return out


def run(model_name: str, steps: int, batch: int, rounds: int, warmup: int = 10,
        configs: dict[str, tuple] | None = None) -> dict[str, list[list[float]]]:
    """Step times per configuration and round; each configuration trains its own copy of the model.

    Steps are interleaved one by one across configurations (plain, then each
    recorder), so a noisy moment hits all of them alike. A round starts fresh
    recorders and times ``steps`` steps after ``warmup`` untimed ones (which
    include the first trace of the graph).
    """
    configs = configs or expand(list(CONFIGS), ["fp32"])
    torch.manual_seed(0)
    base, shape = make(model_name)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    times: dict[str, list[list[float]]] = {k: [] for k in configs}
    tmp = tempfile.mkdtemp()
    copies = [copy.deepcopy(base) for _ in configs]
    copy_opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in copies]
    models, opts = {}, {}

    def step(name):
        model, opt = models[name], opts[name]
        opt.zero_grad()
        dtype = PRECISIONS[configs[name][1]]
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for r in range(rounds):
        # Each round hands the model copies to the configurations in a rotated order:
        # where a copy's tensors land in memory made one plain copy 3% slower than
        # another for a whole run, so no configuration may keep one copy.
        for k, name in enumerate(configs):
            j = (k + r) % len(copies)
            models[name], opts[name] = copies[j], copy_opts[j]
        if r == 0:
            for name in configs:
                for _ in range(3):
                    step(name)
        recs = {}
        try:
            for name, (cfg, _) in configs.items():
                if cfg is not None:
                    recs[name] = ga.Recorder(models[name], os.path.join(tmp, f"{r}-{name}"),
                                             optimizer=opts[name], overwrite=True, **cfg)
            for name in configs:
                times[name].append([])
            names = list(configs)
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
    ap.add_argument("--model", default="lenet", choices=["lenet", "resnet18", "mlp"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=6,
                    help="rounds; a multiple of the 6 configurations gives each every model copy")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps at the start of each round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--precision", default="fp32",
                    help="comma-separated: fp32, bf16, fp16 (autocast on the CPU)")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help="comma-separated configuration names (plain is always run)")
    args = ap.parse_args()
    precisions = args.precision.split(",")
    names = ["plain"] + [n for n in args.configs.split(",") if n != "plain"]
    bad = [p for p in precisions if p not in PRECISIONS] + [n for n in names if n not in CONFIGS]
    if bad:
        ap.error(f"unknown precision or configuration {bad}; choose from {list(PRECISIONS)} "
                 f"and {list(CONFIGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = expand(names, precisions)
    times = run(args.model, args.steps, args.batch, args.rounds, args.warmup, configs)
    print(f"{args.model}, batch {args.batch}, {args.rounds} rounds x {args.steps} timed steps, "
          f"{torch.get_num_threads()} threads, precision {args.precision}")
    # A round's mean step time counts the steps that record and the ones that do not
    # (a median would hide the default's recorded steps); the ratio is taken inside each
    # round (same moment, same noise) and its median over rounds is reported.
    means = {name: [statistics.mean(r) for r in rounds] for name, rounds in times.items()}
    print(f"{'configuration':35s} {'mean ms':>8s} {'ratio':>7s} {'ratio range':>14s}")
    for name, ms in means.items():
        prec = configs[name][1]
        plain = means["plain" if len(precisions) == 1 else f"plain [{prec}]"]
        ratios = [m / p for m, p in zip(ms, plain)]
        print(f"{name:35s} {statistics.median(ms) * 1000:8.2f} {statistics.median(ratios):7.3f} "
              f"{min(ratios):6.3f}-{max(ratios):.3f}")


if __name__ == "__main__":
    main()
