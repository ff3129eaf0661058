"""Command line: ``graphviz-autograd render|train|demo|dashboard|doctor|incidents`` (alias ``gva``).

One click group; each command lives in a module of its own here and is loaded only
when it runs (``--help`` and ``dashboard`` never import torch). The group maps
command names to modules; no command module imports the group.
"""
from __future__ import annotations

import importlib
import sys

import click

from graphviz_autograd.errors import GraphvizAutogradError

# command name -> "module:attribute" of its click command
COMMANDS = {
    "render": "graphviz_autograd.cli.render:render",
    "train": "graphviz_autograd.cli.train:train",
    "demo": "graphviz_autograd.cli.demo:demo",
    "dashboard": "graphviz_autograd.cli.dashboard:dashboard",
    "doctor": "graphviz_autograd.cli.doctor:doctor",
    "incidents": "graphviz_autograd.cli.incidents:incidents",
}


class _Group(click.Group):
    """Loads commands on use; turns our own errors into one clear line and exit code 2."""

    def list_commands(self, ctx) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx, name: str):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GraphvizAutogradError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="graphviz-autograd")
def main() -> None:
    """See what PyTorch autograd built, and why a network does not learn."""
