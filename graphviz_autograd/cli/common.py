"""What every command shares: one ``error:`` line for our errors and for the user's code."""
from __future__ import annotations

import click


class UserCodeError(click.ClickException):
    """The user's model failed while we ran it: one ``error:`` line, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {' '.join(self.format_message().split())}", err=True)
