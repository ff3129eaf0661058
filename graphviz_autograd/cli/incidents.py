"""``graphviz-autograd incidents RUN_DIR``: the steps where training broke, one block each."""
from __future__ import annotations

import click


@click.command()
@click.argument("run_dir", type=click.Path(exists=True))
@click.option("--rank", type=int, default=None, help="Rank to read (default: every rank).")
def incidents(run_dir, rank):
    """Print the incidents of the run in RUN_DIR (non-finite values, loss spikes, exploding
    gradients): step, kind, a summary naming the op, module and line when known, the steps
    captured in detail, and the graph nodes involved.

    Exit code 1 when the run has an incident.
    """
    from graphviz_autograd.store import open_run

    run = open_run(run_dir)
    found = 0
    ranks = run.ranks if rank is None else [rank]
    for r in ranks:
        for inc in run.rank(r).incidents():
            found += 1
            where = f" (rank {r})" if len(run.ranks) > 1 else ""
            click.echo(f"step {inc.step}{where}: {inc.kind}")
            click.echo(f"  {inc.summary}")
            if inc.detail_steps:
                click.echo(f"  detail steps: {', '.join(map(str, inc.detail_steps))}")
            if inc.nodes:
                click.echo(f"  nodes: {', '.join(inc.nodes[:8])}{' ...' if len(inc.nodes) > 8 else ''}")
    if not found:
        click.echo(f"no incidents in {run_dir} ({len(run.steps())} steps)")
    raise SystemExit(1 if found else 0)
