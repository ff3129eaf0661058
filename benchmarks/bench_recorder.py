"""Recording overhead vs a plain training step, measured side by side in one process.

Usage: python benchmarks/bench_recorder.py [--steps N] [--model lenet|resnet18] [--batch B]
Prints the median step time of each configuration and its ratio to the plain step.
Configurations are interleaved round by round so machine noise hits all alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import graphviz_autograd as ga  # noqa: E402
from examples.models import LeNet5  # noqa: E402

CONFIGS = {
    "plain": None,
    "params every step": dict(every=1, record=("params",)),
    "params+nodes every step": dict(every=1, record=("params", "nodes")),
    "all every step": dict(every=1),
    "default (every=10)": dict(),
}


def make(model_name: str):
    if model_name == "resnet18":
        import torchvision
        return torchvision.models.resnet18(num_classes=10), (3, 224, 224)
    return LeNet5(), (1, 28, 28)


def run(model_name: str, steps: int, batch: int, rounds: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model, shape = make(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    times: dict[str, list[float]] = {k: [] for k in CONFIGS}
    tmp = tempfile.mkdtemp()

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(3):
        step()
    for r in range(rounds):
        for name, cfg in CONFIGS.items():
            rec = None if cfg is None else ga.Recorder(model, os.path.join(tmp, f"{r}-{len(times[name])}"),
                                                       optimizer=opt, overwrite=True, **cfg)
            try:
                for i in range(steps):
                    t0 = time.perf_counter()
                    loss = step()
                    if rec is not None:
                        rec.log(i, loss=loss)
                    times[name].append(time.perf_counter() - t0)
            finally:
                if rec is not None:
                    rec.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet", choices=["lenet", "resnet18"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    times = run(args.model, args.steps, args.batch, args.rounds)
    plain = statistics.median(times["plain"])
    print(f"{args.model}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    print(f"{'configuration':28s} {'median ms':>10s} {'ratio':>7s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:28s} {med * 1000:10.2f} {med / plain:7.3f}")


if __name__ == "__main__":
    main()
