"""What incident triggers cost on healthy steps: the default recorder with incidents on and off
against a plain step, interleaved step by step in one process (bench_recorder.py's method).

Usage: python benchmarks/bench_incidents.py [--model lenet|resnet18] [--steps N] [--rounds R]
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

import bench_recorder

CONFIGS = {
    "plain": None,
    "plain again (control)": None,
    "default, incidents off": dict(incidents=False),
    "default, incidents on": dict(),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet", choices=["lenet", "resnet18"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_recorder.CONFIGS = CONFIGS            # same loop, these configurations
    times = bench_recorder.run(args.model, args.steps, args.batch, args.rounds, args.warmup)
    print(f"{args.model}, batch {args.batch}, {args.rounds} rounds x {args.steps} timed steps, "
          f"{torch.get_num_threads()} threads")
    means = {name: [statistics.mean(r) for r in rounds] for name, rounds in times.items()}
    print(f"{'configuration':28s} {'mean ms':>8s} {'ratio':>7s} {'ratio range':>14s}")
    for name, ms in means.items():
        ratios = [m / p for m, p in zip(ms, means["plain"])]
        print(f"{name:28s} {statistics.median(ms) * 1000:8.2f} {statistics.median(ratios):7.3f} "
              f"{min(ratios):6.3f}-{max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
