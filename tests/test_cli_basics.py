"""`tecli --help` and `--version`, and the promise that help stays light."""

import subprocess
import sys

from typer.testing import CliRunner

from tecli import __version__
from tecli.cli import app


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"tecli {__version__}"


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from tecli.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "heavy = sorted(m for m in ('torch', 'numba', 'pandas', 'sqlalchemy', 'torchvision', 'matplotlib') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_usage_errors_of_the_installed_command_are_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "tecli", "run", "--dataset", "usps", "--epochs", "abc"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: Invalid value for '--epochs': Input should be a valid integer, unable to parse string as an integer "
        "(see `tecli run --help`)"
    ]
    assert out.stdout == ""


def test_run_help_shows_the_te_defaults():
    """The --te-* options default to None (to catch them without --te); their help names TEConfig's defaults."""
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.strip("│ ").startswith("--te-")}
    assert "[default: 1024]" in lines["--te-window"] and "[default: -1]" in lines["--te-layers"]
    assert "[default: amplify]" in lines["--te-mode"] and "[default: 0.5]" in lines["--te-threshold-out"]
