"""The ``doctor``: diagnose a model on random inputs and print a readable report.

Used by ``graphviz-autograd doctor SPEC --input 1,3,32,32 [--svg out.svg]``;
also callable from Python.

Example:
    >>> import io, torch
    >>> from rich.console import Console
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> out = Console(file=io.StringIO(), width=100)
    >>> run_doctor(net, torch.randn(16, 4), console=out).ok
    True
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys

from .errors import FormatError, ModelSpecError

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_FILL = {"error": "#ffd6d6", "warning": "#fff1c2"}


def run_doctor(model, inputs, *, target=None, svg=None, console=None, loss_fn=None):
    """Diagnose ``model`` on ``inputs``, print the report, optionally write an annotated SVG.

    Args:
        model: the network (``nn.Module``).
        inputs: its input (a tensor, a tuple of tensors, or a dict of keyword inputs).
        target: optional target; with it the loss is cross-entropy (integer
            target) or MSE (float target), without it the sum of the output.
        svg: path of an SVG (or .png/.pdf/.dot) of the graph with the nodes of
            every finding highlighted.
        console: a ``rich.console.Console`` (default: standard output).
        loss_fn: optional ``loss_fn(output, target)``.

    Returns:
        The :class:`~graphviz_autograd.diagnose.Diagnosis`; ``exit_code(d)`` gives
        the process exit status (1 when a finding has severity ``error``).
    """
    from .diagnose import diagnose

    d = diagnose(model, inputs=inputs, target=target, loss_fn=loss_fn)
    print_report(d, console=console, title=type(model).__name__)
    if svg:
        colors = {n: _FILL[f.severity.value] for f in reversed(d.findings)
                  for n in f.nodes if f.severity.value in _FILL and n in d.graph}
        title = f"{type(model).__name__}: {len(d.errors)} error(s), {len(d.warnings)} warning(s)"
        path = d.graph.render(svg, highlight=d.highlight, colors=colors, title=title)
        _console(console).print(f"graph with highlighted findings written to [bold]{path}[/]")
    return d


def exit_code(diagnosis) -> int:
    """1 when the diagnosis has an error-severity finding, else 0."""
    return 0 if diagnosis.ok else 1


def _console(console):
    if console is None:
        from rich.console import Console

        console = Console()
    return console


def print_report(diagnosis, console=None, title: str = "model") -> None:
    """Print ``diagnosis`` with rich: a summary, each finding, the per-layer gradient norms."""
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    console = _console(console)
    d = diagnosis
    status = "[bold green]healthy[/]" if d.ok else "[bold red]broken[/]"
    loss = f"loss {d.loss:.6g}" if d.loss is not None else "forward failed"
    console.print(Panel(f"{escape(title)}: {status}  ({loss}; {len(d.graph)} graph nodes; "
                        f"{len(d.errors)} error(s), {len(d.warnings)} warning(s))",
                        title="graphviz-autograd doctor", expand=False))
    for f in d.findings:
        body = f"[bold]{escape(f.title)}[/]\n\n{escape(f.message)}"
        if f.hint:
            body += f"\n\n[bold]check:[/] {escape(f.hint)}"
        where = ", ".join(x for x in (f"module {f.module}" if f.module else "",
                                      f"at {f.source}" if f.source else "") if x)
        if where:
            body += f"\n[dim]{escape(where)}[/]"
        if f.nodes:
            body += f"\n[dim]nodes: {escape(', '.join(f.nodes[:6]))}[/]"
        style = _STYLE[f.severity.value]
        console.print(Panel(body, title=f"[{style}]{f.severity.value}[/] {f.kind.value}",
                            title_align="left", border_style=style.split()[-1]))
    if d.layers:
        table = Table(title="gradient norm per layer (forward order)", title_justify="left")
        table.add_column("layer")
        table.add_column("|grad|", justify="right")
        table.add_column("|grad| / |weights|", justify="right")
        shown = d.layers if len(d.layers) <= 24 else d.layers[:12] + d.layers[-12:]
        for i, s in enumerate(shown):
            if len(d.layers) > 24 and i == 12:
                table.add_row("...", "", "")
            table.add_row(escape(s.module or "(root)"), f"{s.grad_norm:.3g}", f"{s.ratio:.3g}")
        console.print(table)
    for note in d.notes:
        console.print(f"[dim]note: {escape(note)}[/]")
    if not d.findings:
        console.print("[green]No problems found: every trainable parameter gets a finite, "
                      "non-vanishing gradient.[/]")


def load_model_spec(spec: str):
    """Build the model named by ``spec``: ``package.module:callable`` or ``path/file.py:Name``.

    The callable (a class or a factory function) is called with no arguments;
    an ``nn.Module`` instance is returned as is. A file's directory is put on
    ``sys.path`` while it is imported, so its sibling imports work.

    Raises:
        ModelSpecError: the spec is malformed, does not import, or does not give
            an ``nn.Module`` (the message names the spec and the fix).

    Example:
        >>> load_model_spec("torch.nn:Identity")
        Identity()
    """
    if not isinstance(spec, str) or ":" not in spec.strip(":"):
        raise ModelSpecError(f"model spec {spec!r} needs the form package.module:callable or "
                             "path/to/file.py:ClassName (e.g. torchvision.models:resnet18)")
    target, _, attr = spec.rpartition(":")
    if not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise ModelSpecError(f"model spec {spec!r}: {attr!r} after the colon is not a Python "
                             "name; write e.g. models.py:LeNet")
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _import_file(spec, target)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelSpecError(
                f"model spec {spec!r}: cannot import {target!r} ({exc}). Install the package, "
                "run from the directory that contains it (or set PYTHONPATH), or give a file "
                "path instead: path/to/file.py:ClassName") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")][:12]
            raise ModelSpecError(f"model spec {spec!r}: {target!r} has no attribute {attr!r}; "
                                 f"it defines: {', '.join(names)}")
        obj = getattr(obj, part)
    return _instantiate(spec, obj)


def _import_file(spec: str, path: str):
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ModelSpecError(f"model spec {spec!r}: file {path!r} does not exist; check the "
                             "path (relative paths start at the current directory)")
    name = "gva_model_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    folder = os.path.dirname(path)
    sys.path.insert(0, folder)
    try:
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any error in the user's file
        sys.modules.pop(name, None)
        raise ModelSpecError(f"model spec {spec!r}: importing {path!r} failed with "
                             f"{type(exc).__name__}: {exc}; fix that file (run "
                             f"`python {path}` to see the full traceback)") from exc
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    return module


def _instantiate(spec: str, obj):
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj
    if not callable(obj):
        raise ModelSpecError(f"model spec {spec!r} names a {type(obj).__name__}, not a class or "
                             "function returning an nn.Module")
    try:
        model = obj()
    except TypeError as exc:
        raise ModelSpecError(f"model spec {spec!r}: calling it with no arguments failed ({exc}). "
                             "Point the spec at a function that takes none, e.g. "
                             "`def make_model(): return Net(num_classes=10)`") from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelSpecError(f"model spec {spec!r} returned {type(model).__name__}, not an "
                             "nn.Module; point it at the model class or a factory returning one")
    return model


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``, ``(1, 3, 224, 224)``) -> ``(1, 3, 224, 224)``.

    Raises:
        FormatError: empty text, a part that is not a positive integer.

    Example:
        >>> parse_shape("2x3x32x32")
        (2, 3, 32, 32)
    """
    raw = str(text).strip().strip("()[]").strip()
    parts = [p.strip() for p in re.split(r"[,x×\s]+", raw) if p.strip()]
    if not parts:
        raise FormatError(f"input shape {text!r} is empty; write the sizes separated by commas, "
                          "e.g. 1,3,224,224")
    shape = []
    for p in parts:
        if not p.isdigit() or int(p) <= 0:
            raise FormatError(f"input shape {text!r}: {p!r} is not a positive integer; write "
                              "the sizes separated by commas, e.g. 1,3,224,224")
        shape.append(int(p))
    return tuple(shape)


def make_inputs(shapes, *, seed: int = 0):
    """Random normal inputs of the given shapes: one tensor, or a tuple for several."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors = tuple(torch.randn(*s, generator=gen) for s in shapes)
    return tensors[0] if len(tensors) == 1 else tensors
