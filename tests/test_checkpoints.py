"""Checkpoints: a run killed after any epoch resumes and records exactly the epochs an
uninterrupted run records; refusals; export; sweeps resume by default."""

import json
import pickle
import subprocess
import sys
import time

import pytest
import torch
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from recorded import epoch_result, record_run
from tecli.checkpoint import dumps, loads
from tecli.cli import app
from tecli.conditions import current_conditions
from tecli.db.recording import claim_run, finish_run, record_epoch
from tecli.data import load_dataset
from tecli.db.schema import Checkpoint, Epoch, Run, RunAttempt, RunStatus
from tecli.db.store import create_db_engine, open_database
from tecli.models import build_model
from tecli.spec import RunSpec, TEConfig
from tecli.train import evaluate, train

# Every column an epoch records except its clocks (wall, CPU and TE seconds are measurements).
SAME = (
    "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "te_mean", "te_max",
    "source_fire_rate", "target_fire_rate", "te_positive_share", "factor_dev_mean", "factor_dev_max",
)  # fmt: skip
VARIANTS = {
    "baseline": [],
    "baseline-contiguous": ["--memory-format", "contiguous"],  # a resume keeps the run's format
    "te-weights": ["--te", "--te-window", "128", "--te-refresh", "4", "--te-layers", "-2,-1"],
    "te-backprop": ["--te", "--te-window", "128", "--te-refresh", "4", "--te-layers", "-2,-1", "--te-reach", "backprop"],
    "te-permute": [
        "--te", "--te-window", "128", "--te-refresh", "4", "--te-threshold", "median", "--te-threshold-out", "argmax", "--te-permute"
    ],
}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def rows(db, run_id) -> list[tuple]:
    with Session(create_db_engine(db)) as session:
        epochs = session.scalars(select(Epoch).where(Epoch.run_id == run_id).order_by(Epoch.epoch)).all()
        return [tuple(getattr(e, f) for f in SAME) for e in epochs]


def recorded_epochs(db) -> int:
    try:
        with Session(create_db_engine(db)) as session:
            return session.scalar(select(func.count()).select_from(Epoch))
    except Exception:  # no schema yet
        return 0


def test_training_state_round_trips_bit_for_bit_in_process():
    data = load_dataset("digits")
    for te in (
        None,
        TEConfig(window=128, refresh=4, layers=(-2, -1)),
        TEConfig(window=100, refresh=3, reach="backprop"),
        TEConfig(window=128, refresh=4, threshold="median", threshold_out="argmax", permute=True),  # draws at each refresh
        TEConfig(window=128, refresh=40),  # 23 batches an epoch: epochs without a refresh repeat the last diagnostics
    ):
        spec = RunSpec(dataset="digits", seed=3, epochs=4, lr=0.05, te=te)
        straight = [tuple(getattr(r, f) for f in SAME) for r in train(spec, data)]
        first = train(spec, data)
        done = [next(iter_) for iter_ in [iter(first)] * 2]
        second = train(spec, data)
        second.load_state_dict(loads(dumps(first.state_dict())))
        resumed = [tuple(getattr(r, f) for f in SAME) for r in [*done, *second]]
        assert resumed == straight


def test_loading_a_checkpoint_runs_no_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    blob = pickle.dumps({"model": Payload()}, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        loads(blob)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "dataset, epochs, kill_after, variant, backend",
    [
        ("digits", 40, 3, "baseline", "sqlite"),
        ("digits", 40, 3, "baseline-contiguous", "sqlite"),
        ("digits", 40, 3, "te-weights", "sqlite"),
        ("digits", 40, 3, "te-backprop", "sqlite"),
        ("digits", 40, 3, "te-permute", "sqlite"),
        ("usps", 5, 2, "baseline", "sqlite"),
        ("usps", 5, 2, "te-weights", "sqlite"),
        ("usps", 5, 2, "te-backprop", "sqlite"),
        ("digits", 40, 3, "te-backprop", "postgresql"),
        ("usps", 5, 2, "te-weights", "postgresql"),
    ],
)
def test_a_run_killed_by_sigkill_resumes_to_the_uninterrupted_rows(tmp_path, request, dataset, epochs, kill_after, variant, backend):
    db = str(tmp_path / "k.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    options = ["--dataset", dataset, "--epochs", epochs, "--seed", 7, "--threads", 1, *VARIANTS[variant]]
    command = [sys.executable, "-m", "tecli", "run", *map(str, options), "--db", db]
    killed = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while recorded_epochs(db) < kill_after:
        assert killed.poll() is None, killed.stderr.read()
        assert time.monotonic() < deadline, "no epochs recorded in time"
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    engine = open_database(db)  # finds the process gone: interrupted
    with Session(engine) as session:
        run = session.get(Run, 1)
        checkpoint = session.get(Checkpoint, 1)
        assert run.status == RunStatus.INTERRUPTED
        recorded = session.scalar(select(func.max(Epoch.epoch)).where(Epoch.run_id == 1))
        assert checkpoint.epoch == recorded >= kill_after  # epoch and checkpoint commit together
    assert recorded < epochs, "the run finished before it was killed; kill it earlier"

    resumed = invoke("run", "--resume", 1, "--threads", 1, "--db", db)
    assert resumed.exit_code == 0, resumed.output
    assert f"run 1 resumed after epoch {recorded}" in resumed.output
    straight = invoke("run", *options, "--db", db)  # the same specification, uninterrupted: run 2
    assert straight.exit_code == 0, straight.output
    assert rows(db, 1) == rows(db, 2) and len(rows(db, 1)) == epochs
    shown = json.loads(invoke("runs", "show", 1, "--db", db, "--format", "json").output)
    memory_format = "contiguous" if "contiguous" in variant else "channels_last"
    assert [(a["number"], a["first_epoch"], a["status"], a["memory_format"]) for a in shown["attempts"]] == [
        (1, 1, "interrupted", memory_format), (2, recorded + 1, "completed", memory_format)
    ]
    assert shown["status"] == "completed" and shown["checkpoint_epoch"] == epochs


@pytest.mark.parametrize(
    "prepare, message",
    [
        (lambda db, e: None, "error: run 1 is completed; there is nothing to resume"),
        (
            lambda db, e: record_run(e, RunSpec(dataset="digits", seed=5), status=RunStatus.INTERRUPTED),
            "error: run 2 has no checkpoint (it stopped before its first epoch ended); start it over with the same `tecli run` options",
        ),
        (
            "other-code",
            "error: run 1's checkpoint was written by code src:000000000000 and this is src:",
        ),
    ],
)
def test_resume_refusals_are_one_line(tmp_path, prepare, message):
    db = str(tmp_path / "r.db")
    assert invoke("run", "--dataset", "digits", "--epochs", 2, "--db", db).exit_code == 0
    engine = open_database(db)
    target = 1
    if prepare == "other-code":
        with Session(engine) as session, session.begin():
            session.execute(update(Run).where(Run.id == 1).values(status=RunStatus.INTERRUPTED))
            session.execute(update(Checkpoint).where(Checkpoint.run_id == 1).values(code_version="src:000000000000"))
    elif prepare(db, engine) is not None:
        target = 2
    with Session(engine) as session:
        before = (session.scalar(select(func.count()).select_from(RunAttempt)), session.get(Run, target).status)
    result = invoke("run", "--resume", target, "--db", db)
    assert result.exit_code == 2
    assert result.output.startswith(message) and len(result.output.strip().splitlines()) == 1, result.output
    with Session(engine) as session:  # nothing written
        assert (session.scalar(select(func.count()).select_from(RunAttempt)), session.get(Run, target).status) == before


def test_a_live_run_is_not_resumed(tmp_path):
    db = str(tmp_path / "r.db")
    engine = open_database(db)
    record_run(engine, RunSpec(dataset="digits"), [epoch_result(1)], status=None)  # running, owned by this process
    result = invoke("run", "--resume", 1, "--db", db)
    assert result.exit_code == 2 and "error: run 1 is running on " in result.output


def test_export_writes_the_final_model_and_its_configuration(tmp_path):
    db = str(tmp_path / "e.db")
    assert invoke("run", "--dataset", "digits", "--epochs", 3, "--te", "--te-window", 128, "--db", db).exit_code == 0
    out = tmp_path / "model"
    result = invoke("runs", "export", 1, "--output", out, "--db", db)
    assert result.exit_code == 0, result.output
    about = json.loads((out / "run.json").read_text())
    assert (about["run_id"], about["status"], about["epoch"], about["config"]["te"]["window"]) == (1, "completed", 3, 128)
    model = build_model(tuple(about["model_args"]["input_shape"]), about["model_args"]["n_classes"])
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    data = load_dataset("digits")
    _, accuracy = evaluate(model, data.x_test, data.y_test)
    assert accuracy == rows(db, 1)[-1][SAME.index("test_acc")]  # the recorded final test accuracy
    again = invoke("runs", "export", 1, "--output", out, "--db", db)
    assert again.exit_code == 2 and "model.pt exists already" in again.output


SWEEP = """
name = "resumable"
seeds = [0]
[defaults]
epochs = 150
[datasets.digits]
target = 0.9
[variants.baseline]
te = false
"""


@pytest.mark.parametrize("restart", [False, True])
def test_a_killed_sweep_resumes_its_run_by_default_and_restarts_it_when_asked(tmp_path, restart):
    db, sweep_file = str(tmp_path / "s.db"), tmp_path / "s.toml"
    sweep_file.write_text(SWEEP)
    command = [sys.executable, "-m", "tecli", "sweep", str(sweep_file), "--threads", "1", "--db", db]
    sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while recorded_epochs(db) < 3:
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.stderr.read()
        time.sleep(0.05)
    sweep.kill()  # the worker dies with it (SIGTERM) and records itself interrupted
    sweep.wait()
    deadline = time.monotonic() + 60
    while True:
        with Session(open_database(db)) as session:
            if session.get(Run, 1).status != RunStatus.RUNNING:
                break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    done = rows(db, 1)
    plan = invoke("sweep", sweep_file, "--dry-run", "--db", db, *(["--restart"] if restart else []))
    assert ("1 runs: 1 to run" if restart else "1 runs: 1 resume") in plan.output, plan.output
    result = invoke("sweep", sweep_file, "--threads", 1, "--db", db, *(["--restart"] if restart else []))
    assert result.exit_code == 0, result.output
    with Session(open_database(db)) as session:
        runs = session.execute(select(Run.id, Run.status).order_by(Run.id)).all()
    if restart:
        assert runs == [(1, "interrupted"), (2, "completed")] and len(rows(db, 2)) == 150
    else:
        assert runs == [(1, "completed")]
        assert rows(db, 1)[: len(done)] == done and len(rows(db, 1)) == 150


def test_retry_failed_starts_a_failed_run_over_instead_of_resuming_it(tmp_path):
    db = str(tmp_path / "f.db")
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(SWEEP.replace("epochs = 150", "epochs = 2"))
    engine = open_database(db)
    spec = RunSpec(dataset="digits", seed=0, epochs=2, variant="baseline")
    attempt = claim_run(engine, spec, current_conditions("cpu"))  # the sweep's key, failed after epoch 1
    record_epoch(engine, attempt, epoch_result(1), dumps({"epoch": 1}))
    finish_run(engine, attempt, RunStatus.FAILED, "diverged")
    assert "1 runs: 1 failed" in invoke("sweep", sweep_file, "--dry-run", "--db", db).output
    result = invoke("sweep", sweep_file, "--retry-failed", "--threads", 1, "--db", db)
    assert result.exit_code == 0, result.output
    with Session(open_database(db)) as session:
        runs = session.execute(select(Run.id, Run.status).order_by(Run.id)).all()
        assert session.get(Checkpoint, 1) is None  # started over: the failed run's state is dropped
    assert runs == [(1, "failed"), (2, "completed")] and len(rows(db, 2)) == 2
