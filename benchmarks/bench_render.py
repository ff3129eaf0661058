"""Render speed and layout: graphviz-autograd vs torchviz (+ the same dot binary), side by side;
then how well full renders use their canvas.

Speed cases: an LSTMCell unrolled 25 steps (a shared parameter at every step), densenet121's
full autograd graph (dense connections), and a 10,000+-node graph (overview: modules
folded). torchviz runs are cut off at --timeout seconds (reported as "> N s").

Layout cases (``--layout``, on by default): resnet18 and torchvision's
fasterrcnn_mobilenet_v3_large_fpn (weights=None, training mode with one target: 452 nodes),
full graphs, no folding: fill ratio (node area / canvas area, from ``dot -Tplain``), drawing
size, SVG and PNG render time and the PNG's pixel size.

Usage: python benchmarks/bench_render.py [--timeout 150] [--smoke] [--no-layout] [--layout-only]
"""
from __future__ import annotations

import argparse
import struct
import subprocess
import time

from common import fmt_s, machine, model_case, table

import graphviz_autograd as ga
from graphviz_autograd.export.dot import fill_ratio, find_dot, layout_size, run_dot, to_dot


def ours(model, forward, **options):
    with ga.instrument(model):
        out = forward()
    t0 = time.perf_counter()
    graph = ga.trace(out, model=model)
    svg = run_dot(to_dot(graph, **options), "svg", timeout=600)
    return time.perf_counter() - t0, len(graph), len(svg)


def torchviz_render(model, forward, timeout):
    try:
        import torchviz
    except ImportError:
        return "not installed (make bench installs it)"
    out = forward()
    t0 = time.perf_counter()
    try:
        dot = torchviz.make_dot(out, params=dict(model.named_parameters()))
    except RecursionError:
        return "RecursionError"
    binary, _ = find_dot()
    try:
        subprocess.run([binary, "-Tsvg"], input=dot.source.encode(), capture_output=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return f"> {timeout} s"
    return time.perf_counter() - t0


def detection_case():
    """fasterrcnn_mobilenet_v3_large_fpn, random weights, training mode with one target."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=5).train()
    images = [torch.rand(3, 224, 224)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 100.0, 120.0]]), "labels": torch.tensor([1])}]
    return model, lambda: sum(model(images, targets).values())


def layout_rows(names) -> list[list[str]]:
    """Fill ratio, drawing size and render times of full graphs (no folding)."""
    rows = []
    for name in names:
        model, forward = detection_case() if name == "fasterrcnn" else model_case(name)
        with ga.instrument(model):
            out = forward()
        graph = ga.trace(out, model=model)
        source = to_dot(graph, max_nodes=None)
        width, height = layout_size(source)
        t0 = time.perf_counter()
        run_dot(source, "svg")
        svg_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        png = run_dot(source, "png")
        png_s = time.perf_counter() - t0
        px_w, px_h = struct.unpack(">II", png[16:24])
        rows.append([name, str(len(graph)), f"{fill_ratio(source):.3f}",
                     f"{width * 96:,.0f} x {height * 96:,.0f}", fmt_s(svg_s), fmt_s(png_s),
                     f"{px_w:,} x {px_h:,} ({len(png) / 1e6:.1f} MB)"])
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=150.0)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--no-layout", action="store_true", help="skip the layout cases")
    ap.add_argument("--layout-only", action="store_true", help="only the layout cases")
    args = ap.parse_args(argv)
    layout = ["lenet"] if args.smoke else ["resnet18", "fasterrcnn"]
    if not args.no_layout:
        print(table(["graph (full)", "nodes", "fill ratio", "drawing (px at 96 dpi)", "SVG", "PNG",
                     "PNG size"], layout_rows(layout)), flush=True)
    if args.layout_only:
        return []
    cases = [("lstm25", {}), ("densenet121", {"max_nodes": None}), ("lstm1000", {"max_nodes": 2000}),
             ("residual1000", {})]
    if args.smoke:
        cases, args.timeout = [("lstm25", {})], 3
    rows = []
    for name, options in cases:
        if name == "residual1000":
            model, forward = _residual_stack(1000)
        else:
            model, forward = model_case(name)
        try:
            t, n, _ = ours(model, forward, **options)
            mine = fmt_s(t)
        except Exception as exc:  # noqa: BLE001 - report, don't die
            mine, n = f"{type(exc).__name__}: {exc}"[:60], "?"
        theirs = torchviz_render(model, forward, args.timeout) if name != "residual1000" else "-"
        rows.append([name, str(n), mine, fmt_s(theirs)])
    print(machine(), "| dot:", find_dot()[0])
    print(table(["graph", "nodes", "ours: trace + dot layout + SVG", "torchviz + dot"], rows))
    return rows


def _residual_stack(blocks: int):
    """A ResNet-like stack of residual MLP blocks (~10 autograd nodes each) for the overview case."""
    import torch
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x):
            return x + self.fc2(torch.relu(self.fc1(x)))

    model = nn.Sequential(*[Block() for _ in range(blocks)])
    x = torch.randn(2, 16)
    return model, lambda: model(x).sum()


if __name__ == "__main__":
    main()
