"""`tecli sweep` for real: tiny digits grids in worker processes, resume, kill -9, failures, bad files."""

import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from sweeps import TINY, children, count, invoke, running_before, sigterm_when_running, statuses, write

from tecli.db.schema import Run, RunStatus, Sweep
from tecli.db.store import create_db_engine, open_database
from tecli.errors import UserError
from tecli.sweep.file import load_sweep

ROOT = Path(__file__).resolve().parent.parent

def test_tiny_sweep_completes_and_a_rerun_trains_nothing(tmp_path):
    db = tmp_path / "s.db"
    sweep_file = write(tmp_path)
    result = invoke("sweep", sweep_file, "--workers", "2", "--db", db)
    assert result.exit_code == 0, result.output
    assert "4 completed, 0 failed" in result.output
    runs = statuses(db)
    assert sorted(runs) == sorted(
        [("digits", v, s, "completed") for v in ("baseline", "te") for s in (0, 1)]
    )
    with Session(open_database(db)) as session:
        sweep = session.scalar(select(Sweep))
        assert sweep.name == "tiny" and sweep.source == sweep_file.read_text()
        assert sweep.targets == {"digits": {"target": 0.8, "metric": "test_acc"}}
        assert {run.sweep_id for run in session.scalars(select(Run))} == {sweep.id}
        assert all(len(run.epochs) == 2 for run in session.scalars(select(Run)))

    again = invoke("sweep", sweep_file, "--db", db)
    assert again.exit_code == 0, again.output
    assert "4 runs: 4 done" in again.output and "0 completed" in again.output
    assert len(statuses(db)) == 4
    listed = invoke("runs", "--sweep", "tiny", "--db", db, "--format", "json")
    assert listed.output.count('"sweep": "tiny"') == 4


def test_dry_run_shows_the_plan_and_trains_nothing(tmp_path):
    db = tmp_path / "s.db"
    result = invoke("sweep", write(tmp_path), "--dry-run", "--db", db)
    assert result.exit_code == 0, result.output
    assert result.output.count("to run") == 5  # four rows and the count line
    assert "4 runs: 4 to run" in result.output
    assert statuses(db) == []


def test_a_failing_run_is_recorded_and_the_others_complete(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "mnist.npz", x_train=np.zeros((4, 5, 5), np.uint8), y_train=np.zeros(4, np.int64),
             x_test=np.zeros((2, 5, 5), np.uint8), y_test=np.zeros(2, np.int64))  # fmt: skip
    sweep_file = write(tmp_path, extra="[datasets.mnist]\nepochs = 1\n")
    db = tmp_path / "s.db"
    result = invoke("sweep", sweep_file, "--workers", "2", "--db", db, "--data-dir", data)
    assert result.exit_code == 1, result.output
    assert "4 completed, 4 failed" in result.output
    runs = statuses(db)
    assert sorted(r[3] for r in runs if r[0] == "digits") == ["completed"] * 4
    assert sorted(r[3] for r in runs if r[0] == "mnist") == ["failed"] * 4
    with Session(open_database(db)) as session:
        errors = session.scalars(select(Run.error).where(Run.status == "failed")).all()
        assert len(errors) == 4 and all("train images have shape (5, 5), but mnist needs" in e for e in errors)

    rerun = invoke("sweep", sweep_file, "--dry-run", "--db", db)
    assert "8 runs: 4 done, 4 failed" in rerun.output and "--retry-failed" in rerun.output
    retry = invoke("sweep", sweep_file, "--dry-run", "--retry-failed", "--db", db)
    assert "8 runs: 4 done, 4 to run" in retry.output


def test_sweep_killed_with_sigkill_resumes_to_one_completed_run_per_key(tmp_path):
    db = tmp_path / "k.db"
    sweep_file = write(tmp_path, epochs=25)
    command = [sys.executable, "-m", "tecli", "sweep", str(sweep_file), "--workers", "2", "--db", str(db)]
    sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while count(db, "completed") < 1 or running_before(db, 10) < 1:  # a run just claimed, not one about to end
        assert sweep.poll() is None and time.monotonic() < deadline, "sweep ended before it could be killed"
        time.sleep(0.1)
    workers = children(sweep.pid)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    deadline = time.monotonic() + 120  # orphaned workers get SIGTERM and record themselves interrupted (slow on a loaded machine)
    while count(db, "running") > 0 or any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, f"workers kept running after the sweep was killed: {statuses(db)}, {workers}"
        time.sleep(0.1)
    assert count(db, "interrupted") >= 1

    result = invoke("sweep", sweep_file, "--workers", "2", "--db", db)
    assert result.exit_code == 0, result.output
    with Session(open_database(db)) as session:
        completed = session.scalars(select(Run.run_key).where(Run.status == "completed")).all()
    assert sorted(completed) == sorted(spec.run_key() for spec in load_sweep(sweep_file).runs)


BAD_FILES = [
    ('name = "x"\nseeds = [0]\nepochs == 3\n', "TOML syntax error", "line 3"),
    (TINY.format(epochs=2, extra="").replace('name = "tiny"', ""), "name: missing", None),
    (TINY.format(epochs=2, extra="").replace("lr = 0.05", "lr = 0.05\nepoch = 3"), "defaults.epoch (line 8): unknown key", None),
    (TINY.format(epochs="'two'", extra=""), "defaults.epochs (line 6): expected an integer >= 1, got 'two'", None),
    (TINY.format(epochs=2, extra="").replace("lam = 2.0", "lam = -1.0"), "variants.te.lam (line 20): expected a finite number >= 0", None),
    (TINY.format(epochs=2, extra="").replace("seeds = [0, 1]", "seeds = [0, 0]"), "seeds (line 3): seeds repeat", None),
    (TINY.format(epochs=2, extra="[datasets.nosuch]\n"), "datasets.nosuch (line 14): unknown data set", None),
    (TINY.format(epochs=2, extra="").replace("te = false", "te = false\nlam = 1.0"), "variants.baseline.lam", "te = false"),
    (TINY.format(epochs=2, extra="").replace("target = 0.8", "target = 80"), "datasets.digits.target (line 13): expected an accuracy in (0, 1]", None),
    (TINY.format(epochs=2, extra="").replace("[defaults.te]\nwindow = 128", "[defaults.te]\nmode = 'loud'"), "defaults.te.mode (line 10): expected one of amplify, dampen", None),
]


@pytest.mark.parametrize("text, message, also", BAD_FILES)
def test_bad_sweep_files_give_one_line_and_record_nothing(tmp_path, text, message, also):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    db = tmp_path / "s.db"
    result = invoke("sweep", path, "--db", db)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert message in lines[0] and str(path) in lines[0]
    if also:
        assert also in lines[0]
    assert not db.exists()


def test_missing_sweep_file(tmp_path):
    result = invoke("sweep", tmp_path / "none.toml", "--db", tmp_path / "s.db")
    assert result.exit_code == 2 and "cannot read the sweep file" in result.output


@pytest.mark.parametrize(
    "name, datasets, runs",
    [("experiments.toml", {"usps", "mnist", "fashionmnist", "cifar10"}, 40), ("experiments-svhn-stl10.toml", {"svhn", "stl10"}, 20)],
)
def test_committed_sweep_files_are_valid(name, datasets, runs):
    sweep = load_sweep(ROOT / name)
    assert {spec.dataset for spec in sweep.runs} == datasets
    assert len(sweep.runs) == runs
    assert {spec.variant for spec in sweep.runs} == {"baseline", "te"}
    assert all(t["target"] is not None for t in sweep.targets.values())


def test_sigterm_stops_the_sweep_marks_runs_interrupted_and_the_rerun_resumes(tmp_path):
    db = tmp_path / "t.db"
    sweep_file = write(tmp_path, epochs=25)
    command = [sys.executable, "-m", "tecli", "sweep", str(sweep_file), "--workers", "2", "--db", str(db)]
    code, stdout, stderr = sigterm_when_running(command, db)
    assert code == 130, stderr
    assert "sweep interrupted; run the same command again to resume" in stderr
    assert "Traceback" not in stderr + stdout
    # both runs that were training stopped: interrupted, unless one had just finished its last epoch
    assert count(db, "running") == 0 and count(db, "interrupted") >= 1
    assert count(db, "interrupted") + count(db, "completed") >= 2
    assert count(db, "completed") + count(db, "interrupted") == len(statuses(db))

    result = invoke("sweep", sweep_file, "--workers", "2", "--db", db)
    assert result.exit_code == 0, result.output
    with Session(open_database(db)) as session:
        completed = session.scalars(select(Run.run_key).where(Run.status == "completed")).all()
    assert sorted(completed) == sorted(spec.run_key() for spec in load_sweep(sweep_file).runs)


def test_a_sweep_is_a_library_call(tmp_path):
    """What `tecli sweep` does, from Python: plan, run, and plan again (everything done)."""
    from tecli.sweep.run import plan_sweep, run_sweep

    sweep_file, db = write(tmp_path, epochs=1), tmp_path / "lib.db"
    planned = plan_sweep(sweep_file, db, threads=1)
    assert [p.state for p in planned.planned] == ["to run"] * 4
    events = []
    result = run_sweep(planned, workers=2, on_event=events.append)
    assert result.counts() == {"completed": 4} and not result.interrupted
    assert [e.kind for e in events].count("epoch") == 4
    assert [p.state for p in plan_sweep(sweep_file, db).planned] == ["done"] * 4
    with pytest.raises(UserError, match="--workers must be >= 1, got 0"):
        run_sweep(planned, workers=0)


@pytest.mark.parametrize("name, db, runs", [("pilot", "study-pilot", 9), ("explore", "study-explore", 390),
                                             ("confirm", "study-confirm", 150), ("observe", "observe-usps", 4)])  # fmt: skip
def test_the_committed_study_databases_hold_every_run_of_their_files(tmp_path, name, db, runs):
    sweep = load_sweep(ROOT / f"experiments-{name}.toml")
    copy = shutil.copy(ROOT / "reports" / f"{db}.db", tmp_path)  # opening it may add WAL files beside it
    with Session(create_db_engine(copy)) as session:
        recorded = dict(session.execute(select(Run.run_key, Run.status)).all())
    assert len(sweep.runs) == runs
    assert {spec.run_key(): RunStatus.COMPLETED for spec in sweep.runs} == recorded


def test_the_confirmation_runs_the_exploration_settings_it_names():
    """experiments-confirm.toml's TE variants are the exploration's selected ones (and the
    permuted control of the first), each stopping at its data set's target."""
    explored = {spec.variant: spec.te for spec in load_sweep(ROOT / "experiments-explore.toml").runs}
    confirm = load_sweep(ROOT / "experiments-confirm.toml")
    assert len(confirm.runs) == 150 and {spec.seed for spec in confirm.runs} == set(range(100, 110))
    assert all(spec.stop_at == confirm.targets[spec.dataset]["target"] for spec in confirm.runs)
    te = {spec.variant: spec.te for spec in confirm.runs if spec.te}
    selected = "te-class(lam=16.0,mode=amplify,reach=backprop,threshold_out={})"
    assert te["te-l16-amplify-backprop-uniform"] == explored[selected.format("uniform")]
    assert te["te-l16-amplify-backprop-argmax"] == explored[selected.format("argmax")]
    assert te["te-l16-amplify-backprop-uniform-permuted"] == replace(explored[selected.format("uniform")], permute=True)
    assert {spec.lr for spec in confirm.runs if spec.variant == "baseline-lr-x2"} == {0.02}


def test_the_observed_runs_are_the_confirmation_settings_on_usps_without_stopping():
    """experiments-observe.toml trains the confirmation's USPS specifications of seed 100 (the
    same names), run to the last epoch, and observes them."""
    observed = load_sweep(ROOT / "experiments-observe.toml")
    confirm = {spec.variant: spec for spec in load_sweep(ROOT / "experiments-confirm.toml").runs
               if spec.dataset == "usps" and spec.seed == 100}  # fmt: skip
    assert observed.observe == 512 and len(observed.runs) == 4
    for spec in observed.runs:
        assert spec.stop_at is None and replace(confirm[spec.variant], stop_at=None) == spec
