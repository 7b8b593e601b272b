"""`tecli run` records into the database: through the CLI, killed outright, stopped, failing."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

import tecli.train
from tecli.cli import app
from tecli.db.schema import Epoch, Run
from tecli.db.store import create_db_engine, open_database


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_run_then_runs_and_runs_show(tmp_path):
    db = str(tmp_path / "r.db")
    for extra in ([], ["--te", "--te-window", "128"]):
        result = invoke("run", "--dataset", "digits", "--epochs", "2", "--seed", "5", "--db", db, *extra)
        assert result.exit_code == 0, result.output
    listed = json.loads(invoke("runs", "--db", db, "--format", "json").output)
    assert [(r["id"], r["variant"], r["status"], r["epochs_done"]) for r in listed] == [
        (1, "baseline", "completed", 2),
        (2, "te", "completed", 2),
    ]
    only_te = json.loads(invoke("runs", "--db", db, "--variant", "te", "--format", "json").output)
    assert [r["id"] for r in only_te] == [2]
    assert json.loads(invoke("runs", "--db", db, "--status", "failed", "--format", "json").output) == []
    shown = json.loads(invoke("runs", "show", "2", "--db", db, "--format", "json").output)
    assert shown["config"]["te"]["window"] == 128 and shown["config"]["seed"] == 5
    assert [e["epoch"] for e in shown["epochs"]] == [1, 2]
    assert shown["epochs"][1]["test_acc"] == listed[1]["last_test_acc"]
    assert [e["te_mean"] is None for e in shown["epochs"]] == [True, False]  # 23 batches per epoch, refresh 32
    table = invoke("runs", "--db", db)
    assert table.exit_code == 0 and "completed" in table.output
    detail = invoke("runs", "show", "1", "--db", db)
    assert detail.exit_code == 0 and "scikit-learn load_digits" in detail.output
    from tecli.conditions import code_version, cpu_model

    with Session(create_db_engine(db)) as session:
        run = session.get(Run, 1)
        assert (run.device, run.gpu_name, run.cpu_model, run.code_version) == ("cpu", None, cpu_model(), code_version())
        assert run.threads == torch.get_num_threads() and run.threads >= 1  # as used, also without --threads
        assert run.code_version.startswith("src:") and len(run.code_commit or "x" * 40) == 40


@pytest.mark.parametrize(
    "args, message",
    [
        (["runs", "show", "99"], "no run with id 99"),
        (["runs", "show", "100000000000000000000000"], "no run with id 100000000000000000000000"),
        (["runs", "--status", "done"], "--status must be one of"),
        (["runs", "--format", "xml"], "--format must be one of table, json"),
    ],
)
def test_runs_mistakes(tmp_path, args, message):
    db = str(tmp_path / "r.db")
    assert invoke("db", "upgrade", "--db", db).exit_code == 0
    result = invoke(*args, "--db", db)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert message in result.output


@pytest.mark.parametrize(
    "args",
    [["runs"], ["runs", "show", "1"], ["report"], ["report", "--format", "json"], ["db", "current"], ["runs", "in-a-missing-folder"]],
)
def test_reading_commands_never_create_a_database(tmp_path, args):
    db = tmp_path / "missing" / "never.db" if args[-1] == "in-a-missing-folder" else tmp_path / "never.db"
    args = args[:1] if args[-1] == "in-a-missing-folder" else args
    result = invoke(*args, "--db", str(db))
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: no database at {db}; check --db or TECLI_DB (tecli run or tecli sweep creates it)"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("db, message", [("{tmp}/nope/r.db", "does not exist"), ("bogus://x", "not a usable")])
def test_bad_db_on_run_records_nothing(tmp_path, db, message):
    result = invoke("run", "--dataset", "digits", "--epochs", "1", "--db", db.format(tmp=tmp_path))
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and message in result.output


def test_user_mistake_after_opening_the_db_records_nothing(tmp_path):
    db = str(tmp_path / "r.db")
    result = invoke("run", "--dataset", "digits", "--te", "--te-layers", "-9", "--db", db)
    assert result.exit_code == 2
    with Session(open_database(db)) as session:
        assert session.scalar(select(func.count()).select_from(Run)) == 0


def test_exception_in_training_marks_the_run_failed(tmp_path, monkeypatch):
    calls = []
    real_evaluate = tecli.train.evaluate

    def evaluate_then_break(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated NaN explosion")
        return real_evaluate(*args)

    monkeypatch.setattr(tecli.train, "evaluate", evaluate_then_break)
    db = str(tmp_path / "r.db")
    result = invoke("run", "--dataset", "digits", "--epochs", "3", "--db", db)
    assert result.exit_code == 1
    assert "run 1 failed: RuntimeError: simulated NaN explosion" in result.output
    with Session(open_database(db)) as session:
        run = session.get(Run, 1)
        assert run.status == "failed" and "simulated NaN explosion" in run.error and "Traceback" in run.error
        assert [e.epoch for e in run.epochs] == [1]


def _start_run(db, epochs=500):
    command = [sys.executable, "-m", "tecli", "run", "--dataset", "digits", "--epochs", str(epochs), "--db", db]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(db, count, process, timeout=120):
    engine = create_db_engine(db)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            with Session(engine) as session:
                if session.scalar(select(func.count()).select_from(Epoch)) >= count:
                    return
        except Exception:  # the schema may not exist yet
            pass
        time.sleep(0.1)
    raise AssertionError("the run did not record epochs in time")


def test_sigkill_mid_training_leaves_an_intact_db_and_an_interrupted_run(tmp_path):
    db = str(tmp_path / "k.db")
    process = _start_run(db)
    _wait_for_epochs(db, 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    engine = open_database(db)  # the next open notices the dead process
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    with Session(engine) as session:
        run = session.get(Run, 1)
        assert run.status == "interrupted"
        epochs = [e.epoch for e in run.epochs]
        assert len(epochs) >= 3 and epochs == list(range(1, len(epochs) + 1))
        assert all(e.test_acc > 0 for e in run.epochs)


def test_sigterm_marks_the_run_interrupted_and_keeps_epochs(tmp_path):
    db = str(tmp_path / "t.db")
    process = _start_run(db)
    _wait_for_epochs(db, 2, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted after" in stderr and "Traceback" not in stderr
    with Session(create_db_engine(db)) as session:  # no reaping needed: the run said so itself
        run = session.get(Run, 1)
        assert run.status == "interrupted" and run.finished_at is not None
        assert len(run.epochs) >= 2
