"""``graphviz-autograd dashboard RUNS_DIR``: serve the Dash app (no torch import)."""
from __future__ import annotations

import click



@click.command()
@click.argument("runs_dir", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. Anything but loopback exposes your runs to the network.")
@click.option("--port", default=8050, show_default=True, type=int)
@click.option("--debug", is_flag=True, help="Dash debug mode (reloader, dev tools).")
def dashboard(runs_dir, host, port, debug):
    """Browse the runs under RUNS_DIR in the browser (graph, gradients, loss), live."""
    from graphviz_autograd.dashboard.app import serve

    serve(runs_dir, host=host, port=port, debug=debug)
