"""The ``doctor``: diagnose a model on random inputs and print a readable report.

Used by ``graphviz-autograd doctor SPEC --input-shape 1,3,32,32 [--svg out.svg]``;
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

from graphviz_autograd.diagnosis.findings import plural

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_FILL = {"error": "#ffd6d6", "warning": "#fff1c2"}


def run_doctor(model, inputs, *, target=None, svg=None, console=None, loss_fn=None):
    """Diagnose ``model`` on ``inputs``, print the report, optionally write an annotated SVG.

    Args:
        model: the network (``nn.Module``).
        inputs: its input (a tensor, a tuple of tensors, or a dict of keyword inputs).
        target: optional target; with it the loss is cross-entropy (integer
            target) or MSE (float target), without it MSE against a fixed random target.
        svg: path of an SVG (or .png/.pdf/.dot) of the graph with the nodes of
            every finding highlighted.
        console: a ``rich.console.Console`` (default: standard output).
        loss_fn: optional ``loss_fn(output, target)``.

    Returns:
        The :class:`~graphviz_autograd.diagnosis.Diagnosis`; ``exit_code(d)`` gives
        the process exit status (1 when a finding has severity ``error``).
    """
    from graphviz_autograd.diagnosis.core import diagnose

    d = diagnose(model, inputs=inputs, target=target, loss_fn=loss_fn)
    print_report(d, console=console, title=type(model).__name__)
    if svg:
        colors = {n: _FILL[f.severity.value] for f in reversed(d.findings)
                  for n in f.nodes if f.severity.value in _FILL and n in d.graph}
        title = (f"{type(model).__name__}: {plural(len(d.errors), 'error')}, "
                 f"{plural(len(d.warnings), 'warning')}")
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
    counts = f"{plural(len(d.errors), 'error')}, {plural(len(d.warnings), 'warning')}"
    notes = len(d.findings) - len(d.errors) - len(d.warnings)
    counts += f", {plural(notes, 'note')}" if notes else ""
    console.print(Panel(f"{escape(title)}: {status}  ({loss}; {plural(len(d.graph), 'graph node')}; "
                        f"{counts})",
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
    if d.findings and not d.errors and not d.warnings:
        console.print("[green]No problems found; the notes above are context.[/]")
    elif not d.findings:
        console.print("[green]No problems found: every trainable parameter gets a finite, "
                      "non-vanishing gradient.[/]")
