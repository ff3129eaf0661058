"""What gathering the ranks costs: bytes per rank and recorded step (from real models' keys),
and the time of a gathered step at 2, 4 and 8 ranks (gloo, CPU processes on this machine),
beside the bare SUM+MAX all-reduce pair, one all-reduce of the same bytes, and a
``ranks="each"`` store write of the same rows.

Usage: python benchmarks/bench_gather.py [--worlds 2 4 8] [--steps 30] [--models lenet resnet50]
       (it starts the ranks itself with torch.distributed.run)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401  (puts the repository on sys.path)
import torch

from graphviz_autograd.record.spreads import COLUMNS, Layout, local_values, pack

EVERY, SCALARS = 50, ("loss", "lr")


def model_keys(name: str) -> dict[str, list[str]]:
    """The keys one recorded step of ``name`` writes (a real Recorder, one process)."""
    import graphviz_autograd as ga

    model, forward = common.model_case(name)
    with tempfile.TemporaryDirectory() as tmp:
        with ga.Recorder(model, tmp, every=1, incidents=False) as rec:
            loss = forward()
            loss.backward()
            rec.log(0, loss=loss)
        with ga.open_run(tmp) as run:
            return {kind: run.keys(kind) for kind in COLUMNS}


def payload(keys: dict[str, list[str]], world: int, window: int = EVERY) -> tuple[int, int]:
    """(cells, bytes one rank sends into the two all-reduces) for these keys."""
    layout = Layout()
    layout.extend([(kind, k) for kind, names in keys.items() for k in names], SCALARS)
    values = local_values(layout, {}, [(s, {n: 1.0 for n in SCALARS}) for s in range(window)])
    packed = pack(values, layout.tested(window), rank=0, bits=max(1, (world - 1).bit_length()),
                  header_max=[0] * 8, header_sum=[0.0])
    return len(values), packed.sums.numel() * 8 + packed.maxes.numel() * 8


def synthetic_rows(counts: dict[str, int], rank: int, step: int) -> dict:
    g = torch.Generator().manual_seed(rank * 7919 + step)
    out = {}
    for kind, n in counts.items():
        vals = torch.rand(n, 13, generator=g, dtype=torch.float64).tolist()
        out[kind] = [(f"{kind}{i}", tuple(v)) for i, v in enumerate(vals)]
    return out


def worker(out: str, steps: int, cases: dict) -> None:
    """One rank: time gathered steps (the whole protocol, rank 0 writing) and the bare pair of
    all-reduces of the same tensors."""
    import torch.distributed as dist

    from graphviz_autograd.record.gather import open_gathered
    from graphviz_autograd.record.gather_options import GatherOptions

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    results = {}
    for name, counts in cases.items():
        run_dir = tempfile.mkdtemp(prefix=f"gva-bench-{rank}-")
        g = open_gathered(run_dir, rank=rank, world=world, options=GatherOptions(), detail_ranks=(0,),
                          every=1, optimizer=None, writer_options=dict(overwrite=True, flush_interval=2.0))
        rows = [synthetic_rows(counts, rank, s) for s in range(4)]
        times = []
        for step in range(steps + 5):
            dist.barrier(group=g.group)
            t0 = time.perf_counter()
            g.add_step(step, wall_time=time.time(), graph_version=None,
                       scalars={"loss": 1.0 + rank, "lr": 0.1}, stats=rows[step % 4])
            if step >= 5:
                times.append(time.perf_counter() - t0)
        n = g.layout.size(1)
        g.close()
        each = []           # ranks="each": this rank writes its own rows to its own store
        from graphviz_autograd.store import RunWriter
        with RunWriter(tempfile.mkdtemp(prefix=f"gva-bench-each-{rank}-"), rank=rank, world_size=world) as w:
            for step in range(steps + 5):
                t0 = time.perf_counter()
                w.add_step(step, wall_time=time.time(), graph_version=None,
                           scalars={"loss": 1.0 + rank, "lr": 0.1}, stats=rows[step % 4])
                if step >= 5:
                    each.append(time.perf_counter() - t0)
        sums = torch.zeros(2 * n + 4 + 1, dtype=torch.float64)
        maxes = torch.zeros(2 * n + 8, dtype=torch.int64)
        bare = []
        for i in range(steps + 5):
            dist.barrier()
            t0 = time.perf_counter()
            works = [dist.all_reduce(sums, async_op=True), dist.all_reduce(maxes, op=dist.ReduceOp.MAX,
                                                                            async_op=True)]
            for w in works:
                w.wait()
            if i >= 5:
                bare.append(time.perf_counter() - t0)
        one, joined = [], torch.zeros(sums.numel() + maxes.numel(), dtype=torch.float64)
        for i in range(steps + 5):      # the same bytes in one all-reduce: what one collective costs
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(joined)
            if i >= 5:
                one.append(time.perf_counter() - t0)
        results[name] = {"step_ms": statistics.median(times) * 1e3, "bare_ms": statistics.median(bare) * 1e3,
                         "one_ms": statistics.median(one) * 1e3, "each_ms": statistics.median(each) * 1e3,
                         "cells": n}
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--models", nargs="+", default=["lenet", "resnet50", "transformer"])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--cases", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.steps, json.loads(args.cases))
        return 0
    print(f"bytes per rank and recorded step (every={EVERY}: the scalars {', '.join(SCALARS)} of "
          f"{EVERY} logged steps ride along)")
    print(f"{'model':12s} {'params':>7s} {'nodes':>6s} {'modules':>8s} {'cells':>7s} "
          f"{'bytes, 2 ranks':>15s} {'bytes, 1024 ranks':>18s}")
    cases = {}
    for name in args.models:
        keys = model_keys(name)
        cells, small = payload(keys, 2)
        _, big = payload(keys, 1024)
        counts = {kind: len(v) for kind, v in keys.items()}
        cases[name] = counts
        print(f"{name:12s} {counts['param']:7d} {counts['node']:6d} {counts['module']:8d} {cells:7d} "
              f"{small:15,d} {big:18,d}")
    print("\ntime of one gathered step (whole protocol, rank 0 writing; median over ranks' medians) "
          "and of the bare SUM+MAX all-reduce pair, gloo on this machine")
    print(f"{'model':12s} {'ranks':>5s} {'gathered step ms':>17s} {'slowest rank ms':>16s} {'bare pair ms':>13s} "
          f"{'one ms':>7s} {'each ms':>8s}")
    for world in args.worlds:
        out = os.path.join(tempfile.mkdtemp(), "gather.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               os.path.abspath(__file__), "--worker", out, "--steps", str(args.steps), "--cases",
               json.dumps(cases)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return 1
        per_rank = json.load(open(out))
        for name in cases:
            step = [r[name]["step_ms"] for r in per_rank]
            bare = [r[name]["bare_ms"] for r in per_rank]
            each = [r[name]["each_ms"] for r in per_rank]
            one = [r[name]["one_ms"] for r in per_rank]
            print(f"{name:12s} {world:5d} {statistics.median(step):17.2f} {max(step):16.2f} "
                  f"{statistics.median(bare):13.2f} {statistics.median(one):7.2f} {statistics.median(each):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
