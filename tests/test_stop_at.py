"""stop_at: a run ends after the first epoch whose test accuracy reaches it, with the
epochs of the full run up to there; recorded, resumable, part of the run key only when set."""

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from tecli.checkpoint import dumps, loads
from tecli.cli import app
from tecli.data import load_dataset
from tecli.db.schema import Epoch, Run, RunStatus
from tecli.db.store import open_database
from tecli.spec import RunSpec, TEConfig
from tecli.sweep.file import parse_sweep
from tecli.train import train

FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "te_mean", "te_max")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def outcome(results) -> list[tuple]:
    return [tuple(getattr(r, f) for f in FIELDS) for r in results]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def full_run(digits):
    return outcome(train(RunSpec(dataset="digits", seed=1, epochs=6, lr=0.05, te=TEConfig(window=128, refresh=4)), digits))


def first_reaching(rows, level) -> int:
    return next(i for i, row in enumerate(rows) if row[FIELDS.index("test_acc")] >= level) + 1


def test_a_run_stops_after_the_first_epoch_at_the_level_with_the_full_runs_epochs(digits, full_run):
    level = full_run[2][FIELDS.index("test_acc")]  # reached by epoch 3 at the latest
    spec = RunSpec(dataset="digits", seed=1, epochs=6, lr=0.05, stop_at=level, te=TEConfig(window=128, refresh=4))
    stopped = outcome(train(spec.validate(), digits))
    assert stopped == full_run[: first_reaching(full_run, level)]
    assert len(stopped) <= 3


def test_a_level_never_reached_trains_every_epoch(digits, full_run):
    spec = RunSpec(dataset="digits", seed=1, epochs=6, lr=0.05, stop_at=1.0, te=TEConfig(window=128, refresh=4))
    assert max(r[FIELDS.index("test_acc")] for r in full_run) < 1.0
    assert outcome(train(spec.validate(), digits)) == full_run


def test_a_checkpoint_after_the_stopping_epoch_trains_nothing_more(digits, full_run):
    level = full_run[1][FIELDS.index("test_acc")]
    spec = RunSpec(dataset="digits", seed=1, epochs=6, lr=0.05, stop_at=level, te=TEConfig(window=128, refresh=4))
    first = train(spec.validate(), digits)
    done = list(first)
    resumed = train(spec, digits)
    resumed.load_state_dict(loads(dumps(first.state_dict())))
    assert list(resumed) == [] and resumed.epoch == len(done) == first_reaching(full_run, level)


def test_run_keys_change_only_when_it_is_set():
    plain = RunSpec(dataset="usps", te=TEConfig()).validate()
    assert "stop_at" not in plain.to_dict()
    assert plain.run_key() == RunSpec(dataset="usps", te=TEConfig(), stop_at=None).validate().run_key()
    stopping = RunSpec(dataset="usps", te=TEConfig(), stop_at=0.9).validate()
    assert stopping.run_key() != plain.run_key()
    assert RunSpec.from_dict(stopping.to_dict()).run_key() == stopping.run_key()


def test_the_command_records_a_completed_run_with_its_stopping_level(tmp_path):
    db = tmp_path / "s.db"
    result = invoke("run", "--dataset", "digits", "--epochs", 8, "--lr", 0.05, "--threads", 1, "--stop-at", 0.5, "--db", db)
    assert result.exit_code == 0, result.output
    with open_database(db).connect() as connection:
        (run,) = connection.execute(select(Run)).all()
        accuracies = connection.scalars(select(Epoch.test_acc).order_by(Epoch.epoch)).all()
    assert run.status == RunStatus.COMPLETED and run.config["stop_at"] == 0.5
    assert accuracies[-1] >= 0.5 and all(a < 0.5 for a in accuracies[:-1]) and len(accuracies) < 8
    assert f"0.5: reached in epoch {len(accuracies)}" in result.output


@pytest.mark.parametrize("value", [0, 1.5, "nan"])
def test_a_bad_level_is_one_line_and_writes_nothing(tmp_path, value):
    db = tmp_path / "none.db"
    result = invoke("run", "--dataset", "digits", "--stop-at", value, "--db", db)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: --stop-at: expected a finite number in (0, 1] (a test accuracy), got {float(value)!r}"
    ]
    assert not db.exists()


def test_sweep_files_set_it_like_any_training_parameter():
    sweep = parse_sweep(
        'name = "s"\nseeds = [0]\n[defaults]\nepochs = 3\n[datasets.usps]\ntarget = 0.9\nstop_at = 0.9\n'
        "[variants.baseline]\nte = false\n[variants.quick]\nte = false\nstop_at = [0.5]\n",
        Path("s.toml"),
    )
    assert {run.variant: run.stop_at for run in sweep.runs} == {"baseline": 0.9, "quick(stop_at=0.5)": 0.5}
