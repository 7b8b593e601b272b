"""The `tecli` command line: thin Typer commands that parse, call and print.

Heavy libraries (torch, numba, pandas, SQLAlchemy) are imported inside the
commands that need them, so `tecli --help` starts fast.
"""

from __future__ import annotations

from typing import Optional

import typer

from tecli import __version__

app = typer.Typer(
    help="Experiment runner for transfer-entropy (TE) accelerated training of CNNs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tecli {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Experiment runner for transfer-entropy (TE) accelerated training of CNNs."""
