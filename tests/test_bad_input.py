"""Bad input of every size ends in one short `error:` line, exit code 2, and no database file.

Values far outside what a run can use (a batch larger than the training set, numbers
past a 32-bit integer, 10,000-character strings) are refused before anything is
recorded, and a message never echoes more than about 200 characters of a value.
"""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tecli.cli import app

LONG = "x" * 10_000
SHORT_MESSAGE = 400  # characters: "about 200" of the value plus the sentence around it


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(text: str) -> str:
    """The only line of `text`, which must be an `error:` line."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text[:2000]
    assert lines[0].startswith("error: "), text[:2000]
    assert "Traceback" not in text
    return lines[0]


def check_refused(result) -> str:
    """Exit code 2 and one error line on stderr (nothing else anywhere); the line."""
    assert result.exit_code == 2, result.output[:2000]
    assert result.stdout == ""
    return one_error_line(result.stderr)


@pytest.fixture
def folder(tmp_path):
    """An empty folder for --db; each test checks that it stays empty."""
    path = tmp_path / "dbs"
    path.mkdir()
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--batch-size", "100000"],
            "batch size 100000 is larger than digits's training set (1437 samples); use a smaller --batch-size",
        ),
        (
            ["--te", "--batch-size", "100000"],
            "batch size 100000 is larger than digits's training set (1437 samples); use a smaller --batch-size",
        ),
        (
            ["--te", "--te-window", "100000"],
            "TE window 100000 is longer than digits's training set (1437 samples); use a smaller --te-window",
        ),
        (
            ["--te", "--te-delay", "2000000000"],
            "TE delay 2000000000 is not shorter than digits's training set (1437 samples); use a smaller --te-delay",
        ),
        (["--epochs", "100000000000000000000"], "--epochs: expected an integer <= 2147483647, got 100000000000000000000"),
        (["--seed", "99999999999"], "--seed: expected an integer <= 2147483647, got 99999999999"),
        (["--te", "--te-window", "99999999999"], "--te-window: expected an integer <= 2147483647, got 99999999999"),
    ],
    ids=["batch-size", "batch-size-te", "te-window", "te-delay", "epochs-1e20", "seed-1e11", "te-window-1e11"],
)
def test_values_too_large_for_the_run(folder, args, message):
    line = check_refused(invoke("run", "--dataset", "digits", *args, "--db", folder / "x.db"))
    assert message in line
    assert list(folder.iterdir()) == []


def test_a_long_dataset_name_is_cut(folder):
    line = check_refused(invoke("run", "--dataset", LONG, "--db", folder / "x.db"))
    assert line.startswith("error: unknown dataset 'xxx")
    assert "(10000 characters)" in line
    assert "valid names: digits, usps" in line
    assert len(line) < SHORT_MESSAGE
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["--te", "--te-mode", LONG],
        ["--te", "--te-reach", "r " * 5_000],
        ["--te", "--te-layers", LONG],
        ["--device", LONG],
    ],
    ids=["te-mode", "te-reach-with-spaces", "te-layers", "device"],
)
def test_long_option_values_are_cut(folder, args):
    line = check_refused(invoke("run", "--dataset", "digits", *args, "--db", folder / "x.db"))
    assert "characters)" in line
    assert len(line) < SHORT_MESSAGE
    assert list(folder.iterdir()) == []


def console(*args, cwd):
    """`python -m tecli ARGS`: the console entry point (run_cli), as the installed command runs it."""
    return subprocess.run(
        [sys.executable, "-m", "tecli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    "args, start",
    [
        (["run", "--dataset", "digits", "--epochs", LONG], "error: Invalid value for '--epochs': "),
        (["run", "--dataset", "digits", "--epochs", "1" * 10_000], "error: Invalid value for '--epochs': "),
        (["run", "--dataset", "digits", "--" + LONG], "error: No such option: --xxx"),
        (["run", "--dataset", "digits", LONG], "error: Got unexpected extra argument(s) (xxx"),
        (["run", "--dataset", "digits", "a " * 5_000], "error: Got unexpected extra argument(s) (a a a"),
        ([LONG], "error: No such command 'xxx"),
        (["runs", "show", LONG], "error: Invalid value for 'run_id': "),
    ],
    ids=["epochs", "epochs-digits", "option-name", "extra-argument", "extra-argument-with-spaces", "command", "run-id"],
)
def test_console_usage_errors_with_long_values_are_one_short_line(tmp_path, folder, args, start):
    out = console(*args, "--db", folder / "x.db", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[:2000]
    assert out.stdout == ""
    line = one_error_line(out.stderr)
    assert line.startswith(start)
    assert line.endswith("--help`)")
    assert len(line) < SHORT_MESSAGE
    assert list(folder.iterdir()) == []


def test_console_user_error_with_long_value_is_one_short_line(tmp_path, folder):
    out = console("run", "--dataset", LONG, "--db", folder / "x.db", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[:2000]
    line = one_error_line(out.stderr)
    assert line.startswith("error: unknown dataset 'xxx")
    assert len(line) < SHORT_MESSAGE
    assert list(folder.iterdir()) == []


def test_run_id_past_any_integer_on_an_existing_database(folder):
    db = folder / "x.db"
    upgraded = invoke("db", "upgrade", "--db", db)
    assert upgraded.exit_code == 0, upgraded.output
    before = sorted(p.name for p in folder.iterdir())
    line = check_refused(invoke("runs", "show", "100000000000000000000000", "--db", db))
    assert line == "error: no run with id 100000000000000000000000; `tecli runs` lists the recorded runs"
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.parametrize(
    "url",
    [
        lambda folder: f"sqlite:///{folder}/{LONG}",
        lambda folder: f"nosuch://{LONG}",
        lambda folder: f"sqlite:////no-such-folder/{LONG}",
    ],
    ids=["sqlite-url", "unknown-scheme", "missing-folder"],
)
@pytest.mark.parametrize("command", [["run", "--dataset", "digits"], ["db", "upgrade"]], ids=["run", "db-upgrade"])
def test_a_long_database_url_is_cut(folder, url, command):
    line = check_refused(invoke(*command, "--db", url(folder)))
    assert "--db" in line or "database" in line
    assert "characters)" in line
    assert len(line) < SHORT_MESSAGE
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [["run", "--dataset", "digits", "--db"], ["runs", "--db"]],
    ids=["run-file-path", "runs-sqlite-url"],
)
def test_a_long_database_file_path_is_cut(folder, args):
    db = folder / LONG if args[0] == "run" else f"sqlite:///{folder}/{LONG}"
    line = check_refused(invoke(*args, db))
    assert len(line) < SHORT_MESSAGE
    assert list(folder.iterdir()) == []
