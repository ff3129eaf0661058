"""Helpers shared by the example scripts: the training loop, evaluation, rendering, printing."""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from graphviz_autograd.errors import ConfigError


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give e.g. 10") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def parser(description: str, *, run_dir: str, epochs: int | None = None, steps: int | None = None,
           data: bool = True, every: int | None = None, progress: bool = False) -> argparse.ArgumentParser:
    """An argparse parser with the options the examples share."""
    p = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    p.add_argument("--run-dir", default=run_dir, help=f"output directory (default: {run_dir}; "
                   "when it already holds something, a fresh one next to it: NAME-2, NAME-3 ...)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --run-dir holds instead of writing to a fresh directory")
    if epochs is not None:
        p.add_argument("--epochs", type=positive_int, default=epochs, help=f"epochs (default: {epochs})")
    if steps is not None or epochs is not None:
        p.add_argument("--steps", type=positive_int, default=steps,
                       help=f"stop after this many batches (default: {steps or 'all'})")
    if data:
        p.add_argument("--data-dir", default=None,
                       help="folder with the MNIST IDX files (default: $GVA_MNIST_DIR, torchvision's "
                            "cache or download, else synthetic digits)")
    if every is not None:
        p.add_argument("--every", type=positive_int, default=every,
                       help=f"record statistics every N steps (default: {every})")
    if progress:
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _occupied(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def fresh_dir(path: str, overwrite: bool = False, echo: Callable[[str], None] = print,
              what: str = "a run") -> str:
    """``path``, or the first free ``path-2``, ``path-3`` ... when ``path`` already holds files.

    Nothing the user has is replaced silently: the examples write their runs and
    images into the directory this returns, and say so when it is not ``path``.
    With ``overwrite`` the existing directory is used (its files are replaced).

    Example:
        >>> fresh_dir("/nonexistent/runs/lenet")
        '/nonexistent/runs/lenet'
    """
    base = Path(path)
    if overwrite or not _occupied(base):
        return str(path)
    for k in itertools.count(2):
        candidate = base.with_name(f"{base.name}-{k}")
        if not _occupied(candidate):
            echo(f"{path} already holds {what}; writing to {candidate} instead "
                 "(pass --overwrite to replace it)")
            return str(candidate)
    raise AssertionError("unreachable")


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's hyper-parameters that JSON can hold (lr, momentum, betas, ...), for a
    run's metadata: the dashboard shows the update rule of a parameter with these numbers."""
    out = {}
    for key, value in optimizer.defaults.items():
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value):
            out[key] = list(value)
    return out


def render(graph, out_dir: str, name: str = "graph", formats=("svg", "png"), **options) -> list[str]:
    """Render ``graph`` to ``out_dir/name.<fmt>`` for each format; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    return [graph.render(os.path.join(out_dir, f"{name}.{fmt}"), **options) for fmt in formats]


def evaluate(model: torch.nn.Module, dataset, batch_size: int = 1000) -> float:
    """Accuracy of ``model`` on ``dataset`` (eval mode, no grad), restoring the train mode."""
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=batch_size):
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader, *,
        loss_fn: Callable, recorder=None, epochs: int = 1, steps: int | None = None,
        progress: bool = True, echo: Callable[[str], None] = print, sampler=None,
        on_graph: Callable | None = None, desc: str = "") -> dict:
    """Train ``model`` for ``epochs`` (at most ``steps`` batches), logging to ``recorder``.

    ``loss_fn(model, output, target)`` returns the loss, or ``(loss, {name: scalar})``
    to log more scalars. Prints ``[epoch 1] loss: 0.123`` per epoch like the seed,
    with a progress line of the running loss on a terminal. ``on_graph(graph)`` is
    called once, as soon as the recorder traced the graph.
    """
    if epochs < 1 or (steps is not None and steps < 1):
        raise ConfigError(f"epochs={epochs}, steps={steps}: both must be at least 1")
    model.train()
    step, losses, epoch_losses = 0, [], []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        running, n = 0.0, 0
        bar = Progress(f"{desc}epoch {epoch + 1}", len(loader) if hasattr(loader, "__len__") else None,
                       enabled=progress)
        for x, y in loader:
            optimizer.zero_grad()
            out = model(x)
            result = loss_fn(model, out, y)
            loss, extra = result if isinstance(result, tuple) else (result, {})
            loss.backward()
            optimizer.step()
            acc = (out.detach().argmax(1) == y).float().mean()
            if recorder is not None:
                recorder.log(step, loss=loss, accuracy=acc, **extra)
                if on_graph is not None and recorder.graph is not None:
                    on_graph(recorder.graph)
                    on_graph = None
            value = loss.item()
            losses.append(value)
            running, n = running + value, n + 1
            bar.update(n, running / n)
            step += 1
            if steps is not None and step >= steps:
                break
        bar.close()
        if n:
            epoch_losses.append(running / n)
            echo(f"[epoch {epoch + 1}] loss: {running / n:.3f}")
        if steps is not None and step >= steps:
            break
    return {"steps": step, "losses": losses, "epoch_losses": epoch_losses,
            "seconds": time.perf_counter() - t0}


class Progress:
    """One line on a terminal: ``epoch 1: 120/125 batches, loss 0.345`` (nothing when piped)."""

    def __init__(self, desc: str, total: int | None, enabled: bool = True):
        self.desc, self.total = desc, total
        self.on = enabled and sys.stderr.isatty()
        self.last = 0.0

    def update(self, done: int, loss: float) -> None:
        now = time.monotonic()
        if self.on and now - self.last > 0.2:
            self.last = now
            of = f"/{self.total}" if self.total else ""
            sys.stderr.write(f"\r{self.desc}: {done}{of} batches, loss {loss:.3f}  ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.on and self.last:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()


def cross_entropy(_model, out, y):
    """The standard classification loss on logits."""
    return torch.nn.functional.cross_entropy(out, y)


def mean(values, first: bool, k: int = 10) -> float:
    """Mean of the first (or last) ``k`` values."""
    part = values[:k] if first else values[-k:]
    return sum(part) / max(len(part), 1)


def loader(dataset, batch_size: int = 64, seed: int = 0, **kwargs) -> DataLoader:
    """A shuffled DataLoader with a seeded generator (same batches every run)."""
    kwargs.setdefault("shuffle", "sampler" not in kwargs)
    return DataLoader(dataset, batch_size=batch_size,
                      generator=torch.Generator().manual_seed(seed), **kwargs)
