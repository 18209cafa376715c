"""How every workbench command reports a user's mistake: one `error:` line on stderr and exit status 2.
Its own module so that the command modules need not import the CLI that imports them."""

from __future__ import annotations

import typer

EXIT_BAD_INPUT = 2


def waiting_for_another_process(session_id: str) -> None:
    typer.echo(f"Another process is running a turn of {session_id!r}; waiting for it to end…", err=True)


def report_error(message: str) -> int:
    """Print one `error:` line on stderr; returns the bad-input exit status."""
    typer.echo(f"error: {message}", err=True)
    return EXIT_BAD_INPUT
