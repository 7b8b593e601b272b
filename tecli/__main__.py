"""`python -m tecli` runs the command line."""

from tecli.cli import run_cli

run_cli()
