"""The FSDP2 collective of a recorded step: bytes each rank sends and the time it takes.

Run: python -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/bench_fsdp.py
(or alone: world size 1). A model of BLOCKS fully_shard-ed linear blocks; the recorder's
shard combination (record/shards.py: one SUM and one MAX all-reduce per recorded step) is timed
on its own, and a recorded training step against a plain one.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import graphviz_autograd as ga  # noqa: E402
from graphviz_autograd.record import shards  # noqa: E402
from graphviz_autograd.record.recorder import _parameters  # noqa: E402

BLOCKS, WIDTH, REPEAT = 12, 256, 50


def main() -> int:
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    else:
        dist.init_process_group("gloo", store=dist.FileStore(tempfile.mktemp(), 1), rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU())
                                  for _ in range(BLOCKS)])
    for block in model:
        fully_shard(block)
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(16, WIDTH)
    model(x).pow(2).mean().backward()
    named, local, sharded = _parameters(model)
    rows = [[1.0, 0.5, 0.1, 100.0, 0.0, 0.0, 1000.0] for _ in named]
    times = []
    for _ in range(REPEAT):
        norms = [1.0] * len(named)
        updates = [0.5] * len(named)
        r = [list(row) for row in rows]
        t0 = time.perf_counter()
        shards.combine(r, norms, updates, sharded)
        times.append(time.perf_counter() - t0)
    sent = len(sharded) * (8 + 1) * 8      # a SUM tensor of 8 float64 and a MAX one of 1, per parameter

    def step(rec=None, i=0):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        if rec is not None:
            rec.log(i, loss=loss)

    plain, recorded = [], []
    with ga.Recorder(model, tempfile.mkdtemp(), optimizer=opt, every=1) as rec:
        for i in range(20):
            t0 = time.perf_counter()
            step()
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            step(rec, i)
            recorded.append(time.perf_counter() - t0)
    if rank == 0:
        print(f"world size {world}, {len(named)} parameters ({len(sharded)} sharded), gloo on CPU")
        print(f"shard combination per recorded step: median {statistics.median(times) * 1e3:.2f} ms, "
              f"{sent} bytes sent per rank ({sent // max(len(sharded), 1)} per sharded parameter)")
        print(f"training step: plain {statistics.median(plain) * 1e3:.1f} ms, recorded every step "
              f"{statistics.median(recorded) * 1e3:.1f} ms")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
