"""What incident triggers cost on healthy steps: the default recorder with incidents on and off
against a plain step, interleaved step by step in one process (bench_recorder.py's method).

Usage: python benchmarks/bench_incidents.py [--model lenet|resnet18] [--steps N] [--rounds R]
"""
from __future__ import annotations

import argparse
import sys

import torch

import bench_recorder
from common import ratio_table

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
    print(ratio_table(times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
