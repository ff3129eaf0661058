"""Tracing speed, side by side in one process: a bare walk, graphviz-autograd, torchviz,
torchview and torchlens, on the models of benchmarks/README.md.

Two measurements per model:
  walk:    the autograd graph already exists; time to turn it into a graph object
           (bare next_functions walk, ours, torchviz.make_dot). Fresh graph per repeat.
  capture: tools that run the forward themselves (ours under instrument(), torchview,
           torchlens); we report their time minus a plain forward in the same run.

Usage: python benchmarks/bench_trace.py [--models lenet,resnet18,...] [--repeat 5] [--smoke]
"""
from __future__ import annotations

import argparse
import sys
import time

from common import bare_walk, fmt_s, machine, model_case, table, timed

import graphviz_autograd as ga

DEFAULT = "lenet,resnet18,resnet50,vit_b_16,transformer,lstm25,lstm1000,lstm5000,lstm10000"
TIME_BOX = {"torchlens": 8_000, "torchview": 20_000, "torchviz": 200_000}   # max nodes we try


def walk_time(forward, fn, repeat):
    times = []
    for _ in range(repeat + 1):
        out = forward()
        t0 = time.perf_counter()
        try:
            fn(out)
        except RecursionError:
            return "RecursionError"
        times.append(time.perf_counter() - t0)
        del out
    times = sorted(times[1:])
    return times[len(times) // 2]


def run_case(name, repeat):
    model, forward = model_case(name)
    params = dict(model.named_parameters())
    out = forward()
    n_nodes = bare_walk(out)
    del out
    row = {"model": name, "nodes": n_nodes}
    row["bare walk"] = walk_time(forward, bare_walk, repeat)
    row["ours"] = walk_time(forward, lambda o: ga.trace(o, model=model), repeat)
    row["ours (no saved)"] = walk_time(forward, lambda o: ga.trace(o, model=model, saved=False), repeat)
    try:
        import torchviz
        old = sys.getrecursionlimit()
        row["torchviz"] = walk_time(forward, lambda o: torchviz.make_dot(o, params=params), repeat) \
            if n_nodes <= TIME_BOX["torchviz"] else "skipped"
        sys.setrecursionlimit(old)
    except ImportError:
        row["torchviz"] = "not installed"
    plain = timed(forward, repeat)
    row["forward"] = plain

    def ours_capture():
        with ga.instrument(model):
            o = forward()
        ga.trace(o, model=model)
    row["ours capture"] = max(timed(ours_capture, repeat) - plain, 0.0)
    module = _Scalar(model, forward)
    for tool in ("torchview", "torchlens"):
        if n_nodes > TIME_BOX[tool]:
            row[tool + " capture"] = "skipped"
            continue
        try:
            fn = _tool_capture(tool, module)
        except ImportError:
            row[tool + " capture"] = "not installed"
            continue
        try:
            row[tool + " capture"] = max(timed(fn, max(1, repeat // 2), budget=120) - plain, 0.0)
        except Exception as exc:  # noqa: BLE001 - report, don't die
            row[tool + " capture"] = f"failed: {type(exc).__name__}"
    return row


class _Scalar:
    """Wraps a forward closure as a module for tools that want ``model(x)``."""

    def __new__(cls, model, forward):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = model

            def forward(self, _dummy):
                return forward()
        return Wrapped()


def _tool_capture(tool, module):
    import torch
    dummy = torch.zeros(1)
    if tool == "torchview":
        import torchview
        return lambda: torchview.draw_graph(module, input_data=dummy, depth=2, save_graph=False)
    import torchlens
    return lambda: torchlens.trace(module, [dummy], save=None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    args = ap.parse_args(argv)
    if args.smoke:
        args.models, args.repeat = "lenet,lstm25", 1
    import warnings
    warnings.simplefilter("ignore")
    rows = []
    for m in args.models.split(","):
        rows.append(run_case(m, args.repeat))
        print("done:", {k: fmt_s(v) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    headers = ["model", "nodes", "bare walk", "ours", "ours (no saved)", "torchviz", "forward",
               "ours capture", "torchview capture", "torchlens capture"]
    body = [[r["model"], str(r["nodes"])] + [fmt_s(r.get(h)) for h in headers[2:]] for r in rows]
    print(machine())
    print(table(headers, body))
    print()
    ratios = [[r["model"], f"{r['ours'] / r['bare walk']:.1f}x" if isinstance(r["ours"], float) else "-",
               f"{r['torchviz'] / r['ours']:.1f}x" if isinstance(r.get("torchviz"), float) else r.get("torchviz", "-")]
              for r in rows]
    print(table(["model", "ours / bare walk", "torchviz / ours"], ratios))
    return rows


if __name__ == "__main__":
    main()
