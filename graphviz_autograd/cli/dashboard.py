"""``graphviz-autograd dashboard RUNS_DIR``: serve the Dash app (no torch import)."""
from __future__ import annotations

import click


@click.command()
@click.argument("runs_dir", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. Anything but loopback exposes your runs to the network.")
@click.option("--port", default=8050, show_default=True, type=int)
@click.option("--debug", is_flag=True, help="Dash's development server (reloader, dev tools).")
def dashboard(runs_dir, host, port, debug):
    """Browse the runs under RUNS_DIR in the browser (graph, gradients, loss), live.

    Compare runs with http://127.0.0.1:8050/?runs=NAME1,NAME2 (names as the run picker lists
    them; NAME@RANK picks a rank)."""
    from graphviz_autograd.dashboard.server import serve
    from graphviz_autograd.errors import ConfigError

    try:
        serve(runs_dir, host=host, port=port, debug=debug)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
