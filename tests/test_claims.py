"""Claims: one run key, one trainer, whatever the number of processes, sweeps or machines."""

import multiprocessing
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from recorded import TEST_CONDITIONS, epoch_result, record_run
from tecli.db.recording import ClaimRefused, RunTakenOver, claim_run, finish_run, record_epoch
from tecli.db.schema import Claim, Run, RunStatus, utcnow
from tecli.db.store import open_database
from tecli.spec import RunSpec

SPEC = RunSpec(dataset="digits", seed=3, epochs=2)


def _holder(engine, key) -> int:
    with Session(engine) as session:
        return session.scalar(select(Claim.run_id).where(Claim.run_key == key))


def test_a_running_key_is_refused_and_a_completed_one_only_to_sweeps(db_url):
    engine = open_database(db_url)
    first = claim_run(engine, SPEC, TEST_CONDITIONS)
    with pytest.raises(ClaimRefused, match=f"run key {SPEC.run_key()} is running as run {first.run_id} on "):
        claim_run(engine, SPEC, TEST_CONDITIONS)
    with pytest.raises(ClaimRefused, match="is running"):
        claim_run(engine, SPEC, TEST_CONDITIONS, rerun_completed=True)  # not even by hand
    record_epoch(engine, first, epoch_result(1))
    finish_run(engine, first, RunStatus.COMPLETED)
    with pytest.raises(ClaimRefused, match=f"is completed as run {first.run_id}"):
        claim_run(engine, SPEC, TEST_CONDITIONS)  # a sweep: done
    again = claim_run(engine, SPEC, TEST_CONDITIONS, rerun_completed=True)  # `tecli run` by hand: a new attempt
    assert again.run_id != first.run_id and _holder(engine, SPEC.run_key()) == again.run_id
    finish_run(engine, again, RunStatus.INTERRUPTED)
    with pytest.raises(ClaimRefused, match=f"is completed as run {first.run_id}"):
        claim_run(engine, SPEC, TEST_CONDITIONS)  # an older completed attempt still makes the key done


def test_interrupted_failed_and_dead_holders_give_way(db_url):
    engine = open_database(db_url)
    interrupted = claim_run(engine, SPEC, TEST_CONDITIONS)
    finish_run(engine, interrupted, RunStatus.INTERRUPTED)
    failed = claim_run(engine, SPEC, TEST_CONDITIONS)
    finish_run(engine, failed, RunStatus.FAILED)
    with pytest.raises(ClaimRefused, match="is failed"):
        claim_run(engine, SPEC, TEST_CONDITIONS)  # a sweep without --retry-failed
    dead = claim_run(engine, SPEC, TEST_CONDITIONS, retry_failed=True)
    with Session(engine) as session, session.begin():  # its machine went silent a lease ago
        session.execute(
            update(Run)
            .where(Run.id == dead.run_id)
            .values(host="elsewhere", heartbeat_at=utcnow() - timedelta(seconds=301), lease_seconds=300)
        )
    taker = claim_run(engine, SPEC, TEST_CONDITIONS)
    assert _holder(engine, SPEC.run_key()) == taker.run_id
    with Session(engine) as session:
        assert session.get(Run, dead.run_id).status == RunStatus.INTERRUPTED
    # the silent owner comes back: its writes are refused, the new owner's are not
    with pytest.raises(RunTakenOver, match=f"run {dead.run_id} was declared dead"):
        record_epoch(engine, dead, epoch_result(1))
    assert not finish_run(engine, dead, RunStatus.COMPLETED)
    record_epoch(engine, taker, epoch_result(1))
    assert finish_run(engine, taker, RunStatus.COMPLETED)


KEYS = 3


def _race(url: str, barrier, results) -> None:
    engine = open_database(url)
    for key_seed in range(KEYS):
        barrier.wait()  # all racers claim each key at the same moment
        try:
            results.put((key_seed, "won", claim_run(engine, RunSpec(dataset="digits", seed=key_seed), TEST_CONDITIONS).run_id))
        except ClaimRefused as refused:
            results.put((key_seed, "refused", refused.run_id))


@pytest.mark.parametrize("holder", ["none", "interrupted"])
def test_processes_racing_for_one_key_give_it_to_exactly_one(db_url, holder):
    """8 processes claim the same key at the same moment, for new keys and for keys whose
    holder was interrupted (the compare-and-set path)."""
    engine = open_database(db_url)
    if holder == "interrupted":
        for key_seed in range(KEYS):
            record_run(engine, RunSpec(dataset="digits", seed=key_seed), status=RunStatus.INTERRUPTED)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(8), context.Queue()
    racers = [context.Process(target=_race, args=(db_url, barrier, results)) for _ in range(8)]
    for racer in racers:
        racer.start()
    outcomes = [results.get(timeout=120) for _ in range(8 * KEYS)]
    for racer in racers:
        racer.join(timeout=60)
    for key_seed in range(KEYS):
        mine = [(outcome, run_id) for seed, outcome, run_id in outcomes if seed == key_seed]
        winners = [run_id for outcome, run_id in mine if outcome == "won"]
        assert len(winners) == 1, mine
        assert {run_id for outcome, run_id in mine if outcome == "refused"} == set(winners)
        key = RunSpec(dataset="digits", seed=key_seed).run_key()
        with Session(engine) as session:
            running = session.scalars(select(Run.id).where(Run.run_key == key, Run.status == "running")).all()
        assert running == winners == [_holder(engine, key)]


ROOT = Path(__file__).resolve().parent.parent
GRID = """
name = "shared"
seeds = [0, 1]
[defaults]
epochs = 1
[defaults.te]
window = 128
[datasets.digits]
target = 0.8
[variants.baseline]
te = false
[variants.te]
te = true
"""


def test_two_sweeps_of_one_file_train_each_key_once(db_url, tmp_path):
    """Two real `tecli sweep` processes started together share the grid: 4 keys, 4 attempts,
    and each sweep ends when the grid is done."""
    sweep_file = tmp_path / "shared.toml"
    sweep_file.write_text(GRID)
    open_database(db_url)  # the schema exists before they race (their own race is tested in test_store)
    command = [sys.executable, "-m", "tecli", "sweep", str(sweep_file), "--workers", "1", "--threads", "1", "--db", db_url]
    sweeps = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [sweep.communicate(timeout=400) for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    engine = open_database(db_url)
    with Session(engine) as session:
        attempts = session.execute(select(Run.run_key, Run.status)).all()
    assert len(attempts) == 4 and {status for _, status in attempts} == {"completed"}
    assert len({key for key, _ in attempts}) == 4
    summaries = [next(line for line in stdout.splitlines() if line.startswith("sweep: ")) for stdout, _ in outputs]
    completed = [int(line.split("sweep: ")[1].split(" completed")[0]) for line in summaries]
    assert sum(completed) == 4, summaries
