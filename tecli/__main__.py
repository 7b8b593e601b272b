"""`python -m tecli` runs the command line."""

from tecli.cli import app

app(prog_name="tecli")
