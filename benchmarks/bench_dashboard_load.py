"""Many browsers on one dashboard: N concurrent clients against the real server (the CLI, waitress,
8 threads), each sending the callbacks a page sends while it watches a run, over keep-alive
connections. Prints p50/p90/p99/max latency per callback and overall, and errors.

    ../.venv/bin/python bench_dashboard_load.py --clients 50 --requests 40

The run is a real LeNet-5 recording (graph, scalars, statistics every step). The mix per
client round: the live poll (LATEST store), the step label, the loss curve and the graph's
colours at a step (the callbacks every open page sends as it follows a live run).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import graphviz_autograd as ga  # noqa: E402
from graphviz_autograd.examples.models import LeNet5  # noqa: E402
from hostile_dash import (dependencies, latest_of, payload, run_values, start_server, stop,  # noqa: E402
                          wait_ready)

MIX = {"live poll": "..gva-latest.data", "step label": "gva-step-label.children",
       "loss curve": "gva-loss.figure", "graph colours": "..gva-elements.data"}


def record_run(run_dir: Path, steps: int) -> None:
    torch.manual_seed(0)
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with ga.Recorder(model, run_dir, optimizer=opt, every=1) as rec:
        for step in range(steps):
            x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            rec.log(step, loss=loss)


def client(port: int, bodies: dict[str, list[bytes]], n: int, out: list, errors: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    names = list(bodies)
    for i in range(n):
        name = names[i % len(names)]
        body = bodies[name][i % len(bodies[name])]
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/_dash-update-component", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            status = r.status
        except (OSError, http.client.HTTPException) as exc:
            errors.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            continue
        out.append((name, time.perf_counter() - t0))
        if status not in (200, 204):
            errors.append(f"HTTP {status} for {name}")
    conn.close()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=40, help="per client")
    ap.add_argument("--steps", type=int, default=200, help="recorded steps of the run")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    root = tmp / "runs"
    record_run(root / "lenet", args.steps)
    proc, port = start_server(root)
    try:
        wait_ready(port)
        latest, _status = latest_of(port, "lenet")
        deps = {d["output"]: d for d in dependencies(port)}
        bodies: dict[str, list[bytes]] = {}
        for name, prefix in MIX.items():
            dep = next(d for out, d in deps.items() if out.startswith(prefix))
            steps = range(0, args.steps, max(1, args.steps // 16))
            bodies[name] = [json.dumps(payload(dep, run_values("lenet", latest, step))).encode()
                            for step in steps]
        for name, versions in bodies.items():             # warm: layout, caches, first reads
            for body in versions:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                c.request("POST", "/_dash-update-component", body, {"Content-Type": "application/json"})
                c.getresponse().read()
                c.close()
        out: list[tuple[str, float]] = []
        errors: list[str] = []
        threads = [threading.Thread(target=client, args=(port, bodies, args.requests, out, errors))
                   for _ in range(args.clients)]
        load = os.getloadavg()[0]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        stop(proc)
    print(f"{args.clients} clients x {args.requests} requests, {len(out)} answered, "
          f"{len(errors)} errors in {wall:.1f} s ({len(out) / wall:.0f} req/s); load before {load:.1f}")
    rows = [(name, [t for n, t in out if n == name]) for name in MIX] + [("all", [t for _, t in out])]
    print(f"{'callback':16s} {'n':>5s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
    for name, times in rows:
        if times:
            print(f"{name:16s} {len(times):5d} {statistics.median(times) * 1000:8.0f} "
                  f"{pct(times, 0.9) * 1000:8.0f} {pct(times, 0.99) * 1000:8.0f} {max(times) * 1000:8.0f}")
    if errors:
        print("errors:", errors[:5])


if __name__ == "__main__":
    main()
