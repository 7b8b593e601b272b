"""`tecli run` through Typer's CliRunner: real digits runs and one-line user errors."""

import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from typer.testing import CliRunner

from tecli.cli import app


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_run_digits_baseline_and_te():
    baseline = invoke("run", "--dataset", "digits", "--epochs", "2", "--lr", "0.05", "--threads", "1")
    assert baseline.exit_code == 0, baseline.output
    assert "epoch   2/2" in baseline.output
    assert "variant baseline" in baseline.output
    te = invoke("run", "--dataset", "digits", "--epochs", "2", "--lr", "0.05", "--te", "--te-window", "128")
    assert te.exit_code == 0, te.output
    assert "variant te" in te.output
    assert "mean TE" in te.output
    assert "TE share of time" in te.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "nosuch"], "unknown dataset 'nosuch'"),
        (["--dataset", "digits", "--te", "--te-fraction", "1.5"], "--te-fraction: expected a finite number in (0, 1], got 1.5"),
        (["--dataset", "digits", "--te", "--te-mode", "louder"], "--te-mode: expected one of amplify, dampen, got 'louder'"),
        (["--dataset", "digits", "--te", "--te-layers", "last"], "--te-layers must be comma-separated integers"),
        (["--dataset", "digits", "--te", "--te-layers", "-7"], "--te-layers: expected Linear layer indices from -3 to 2"),
        (["--dataset", "digits", "--te", "--te-layers", "-1,2"], "each layer once"),
        (["--dataset", "digits", "--te-lambda", "2"], "--te-lambda needs --te"),
        (["--dataset", "digits", "--te", "--lr", "inf"], "--lr: expected a finite number > 0"),
        (["--dataset", "digits", "--epochs", "0"], "--epochs: expected an integer >= 1, got 0"),
        (["--dataset", "digits", "--lr", "-1"], "--lr: expected a finite number > 0, got -1.0"),
        (["--dataset", "digits", "--device", "tpu"], "--device must be cpu or cuda"),
        (["--dataset", "digits", "--threads", "0"], "--threads must be from 1 to 1024, got 0"),
        (["--dataset", "digits", "--memory-format", "nhwc"], "--memory-format must be channels_last or contiguous, got 'nhwc'"),
        (["--dataset", "digits", "--te", "--te-lambda", "-2"], "--te-lambda: expected a finite number >= 0"),
        (["--dataset", "digits", "--te", "--te-layers", "-1,-1"], "each layer once"),
    ],
)
def test_user_mistakes_end_in_one_line_and_exit_2(args, message):
    result = invoke("run", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_corrupt_data_file_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TECLI_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    result = invoke("run", "--dataset", "mnist", "--data-dir", str(tmp_path), "--epochs", "1")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot read mnist from npz mnist.npz" in lines[0] and "corrupt" in lines[0]


def test_missing_data_offline_is_one_clear_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)  # offline even where CI has a network
    monkeypatch.setenv("TECLI_CACHE_DIR", str(tmp_path / "cache"))
    empty = tmp_path / "data"
    empty.mkdir()
    result = invoke("run", "--dataset", "svhn", "--data-dir", str(empty), "--epochs", "1")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "svhn" in lines[0] and str(empty) in lines[0]
    assert "train_32x32.mat" in lines[0] and "network is unreachable" in lines[0]


def test_the_console_command_exits_with_its_code_and_a_clean_database(tmp_path):
    """`tecli` skips the interpreter's teardown (seconds with torch loaded), but not what
    exit must do: the exit code, the output, the database closed (no WAL file left)."""
    db = tmp_path / "t.db"
    command = [sys.executable, "-m", "tecli", "run", "--dataset", "digits", "--epochs", "1", "--db", str(db)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "best test accuracy" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.db"]
    mistake = subprocess.run([*command[:4], "--dataset", "nope", "--db", str(db)], capture_output=True, text=True)
    assert mistake.returncode == 2 and mistake.stderr.startswith("error: unknown dataset 'nope'")
    usage = subprocess.run([sys.executable, "-m", "tecli", "run", "--epochs", "x"], capture_output=True, text=True)
    assert usage.returncode == 2 and "error:" in usage.stderr


def test_an_epoch_whose_feedback_changed_nothing_is_flagged_and_its_diagnostics_recorded(tmp_path):
    """On digits the class layer's softmax stays under 0.5 early on: no target fires, every
    factor stays 1. The run says so for each such epoch, and the rows show why; with a
    threshold the outputs reach, the feedback acts and nothing is flagged."""
    from sqlalchemy import select

    from tecli.db.schema import Epoch
    from tecli.db.store import open_database

    def run(db, *extra):
        result = invoke("run", "--dataset", "digits", "--epochs", "2", "--te", "--te-refresh", "4", "--db", str(db), *extra)
        assert result.exit_code == 0, result.output
        with open_database(db).connect() as connection:
            return result.output, connection.execute(select(Epoch).order_by(Epoch.epoch)).all()

    output, rows = run(tmp_path / "inert.db")
    assert output.count("the TE feedback changed nothing") == 2 and "no target neuron fired" in output
    assert [row.factor_dev_max for row in rows] == [0.0, 0.0]
    assert all(row.target_fire_rate == 0.0 and 0 < row.source_fire_rate < 1 for row in rows)
    assert all(row.cpu_seconds > 0 for row in rows)

    output, rows = run(tmp_path / "acting.db", "--te-threshold-out", "0.1")
    assert "changed nothing" not in output
    assert all(row.factor_dev_max > 0 and row.factor_dev_mean > 0 and 0 < row.te_positive_share <= 1 for row in rows)
    assert all(0 < row.target_fire_rate < 1 for row in rows)
