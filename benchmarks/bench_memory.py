"""Memory while recording: RSS over 1,000 recorded steps must stay flat (<= 5% growth),
and no tensor, node or graph may outlive its step.

Usage: python benchmarks/bench_memory.py [--steps 1000] [--every 1]
"""
from __future__ import annotations

import argparse
import gc
import os
import tempfile

import torch
import torch.nn.functional as F

from common import machine

import graphviz_autograd as ga
from graphviz_autograd.examples.models import LeNet5


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def live_tensors() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=1)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    warm = max(args.steps // 10, 1)
    marks = {}
    with ga.Recorder(model, tempfile.mkdtemp(), optimizer=opt, every=args.every) as rec:
        for step in range(args.steps):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            rec.log(step, loss=loss)
            if step + 1 in (warm, args.steps):
                gc.collect()
                marks[step + 1] = (rss_mib(), live_tensors())
    (r0, t0), (r1, t1) = marks[warm], marks[args.steps]
    print(machine())
    print(f"recorded {args.steps} steps (every={args.every}) of LeNet-5, batch 64")
    print(f"RSS after {warm} steps: {r0:.1f} MiB; after {args.steps}: {r1:.1f} MiB; "
          f"growth {100 * (r1 - r0) / r0:+.2f}%")
    print(f"live tensors after {warm} steps: {t0}; after {args.steps}: {t1}")


if __name__ == "__main__":
    main()
