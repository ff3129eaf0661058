"""Shared helpers for the benchmark scripts: models, timing, tables."""
from __future__ import annotations

import gc
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from graphviz_autograd.live.stack import ensure_release_stack  # noqa: E402

# The bare walk and the other tools touch every node of deep graphs too; without a big
# enough stack torch 2.14 segfaults when those graphs are released (see _stack.py).
ensure_release_stack(200_000)


def lstm_unrolled(steps: int):
    cell = nn.LSTMCell(8, 16)
    x = torch.randn(1, 8)

    def forward():
        h = torch.zeros(1, 16)
        c = torch.zeros(1, 16)
        for _ in range(steps):
            h, c = cell(x, (h, c))
        return h.sum()
    return cell, forward


def model_case(name: str):
    """``(model, forward)``: ``forward()`` returns a scalar with a fresh autograd graph."""
    torch.manual_seed(0)
    if name.startswith("lstm"):
        return lstm_unrolled(int(name[4:]))
    if name == "lenet":
        from graphviz_autograd.examples.models import LeNet5
        model, x = LeNet5(), torch.randn(64, 1, 28, 28)
    elif name == "transformer":
        model = nn.Transformer(d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
                               dim_feedforward=1024, dropout=0.0, batch_first=True)
        src, tgt = torch.randn(2, 16, 256), torch.randn(2, 16, 256)
        return model, lambda: model(src, tgt).pow(2).mean()
    else:
        import torchvision
        builders = {"resnet18": (torchvision.models.resnet18, 224), "resnet50": (torchvision.models.resnet50, 224),
                    "vit_b_16": (torchvision.models.vit_b_16, 224), "densenet121": (torchvision.models.densenet121, 64),
                    "resnet18_small": (torchvision.models.resnet18, 32)}
        build, size = builders[name]
        model, x = build(), torch.randn(2, 3, size, size)
    return model, lambda: model(x).logsumexp(1).mean()


def bare_walk(root) -> int:
    """A bare 20-line ``next_functions`` walk: the floor for any Python tracer."""
    seen = {root.grad_fn}
    stack = [root.grad_fn]
    while stack:
        fn = stack.pop()
        for nxt, _ in fn.next_functions:
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return len(seen)


def timed(fn, repeat: int, warmup: int = 1, budget: float = 60.0):
    """Median seconds of ``fn()`` over ``repeat`` runs after ``warmup``; stops early past ``budget``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return statistics.median(times)


def fmt_s(seconds) -> str:
    if seconds is None:
        return "-"
    if isinstance(seconds, str):
        return seconds
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def machine() -> str:
    import platform
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")


def ratio_table(times: dict[str, list[list[float]]]) -> str:
    """Mean step time per configuration and its ratio to ``"plain"`` (median over rounds; the
    ratio is taken inside each round, same moment, same noise), as printed lines."""
    means = {name: [statistics.mean(r) for r in rounds] for name, rounds in times.items()}
    lines = [f"{'configuration':28s} {'mean ms':>9s} {'ratio':>7s} {'ratio range':>14s}"]
    for name, ms in means.items():
        ratios = [m / p for m, p in zip(ms, means["plain"])]
        lines.append(f"{name:28s} {statistics.median(ms) * 1000:9.2f} {statistics.median(ratios):7.3f} "
                     f"{min(ratios):6.3f}-{max(ratios):.3f}")
    return "\n".join(lines)
