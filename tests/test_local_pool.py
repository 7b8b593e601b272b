"""The local executor's warm workers: a worker that dies or hangs fails its run and is
replaced, and the rest of the grid completes."""

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from sweeps import count, invoke, statuses, write
from tecli.db.liveness import process_alive
from tecli.db.schema import Run
from tecli.db.store import create_db_engine


def _running_pid(db, deadline: float, sweep: subprocess.Popen) -> tuple[int, int]:
    """(run id, worker pid) of a run that has recorded an epoch."""
    engine = create_db_engine(f"sqlite:///{db}")
    while True:
        assert sweep.poll() is None and time.monotonic() < deadline, "no run got going"
        try:
            with Session(engine) as session:
                for run in session.scalars(select(Run).where(Run.status == "running")):
                    if run.epochs:
                        return run.id, run.pid
        except OperationalError:
            pass  # not created yet
        time.sleep(0.05)


@pytest.mark.parametrize("harm", ["killed", "stalled"])
def test_a_worker_that_dies_or_hangs_fails_its_run_and_is_replaced(tmp_path, harm):
    db, sweep_file = tmp_path / "p.db", write(tmp_path, epochs=25)
    command = [sys.executable, "-m", "tecli", "sweep", str(sweep_file), "--workers", "2", "--stall-timeout", "10", "--db", str(db)]
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_id, pid = _running_pid(db, time.monotonic() + 180, sweep)
    os.kill(pid, signal.SIGKILL if harm == "killed" else signal.SIGSTOP)
    stdout, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, stderr  # a failed run
    assert "Traceback" not in stdout + stderr
    assert not process_alive(pid, None)  # a stalled worker is killed, not left stopped
    with Session(create_db_engine(f"sqlite:///{db}")) as session:
        victim = session.get(Run, run_id)
        expected = "worker died (exit code -9)" if harm == "killed" else "worker made no progress for 10 s and was killed"
        assert victim.status == "failed" and victim.error == expected
        assert [a.status for a in victim.attempts] == ["failed"]
        assert 1 <= len(victim.epochs) < 25  # what it recorded before it was harmed stays
    assert count(db, "completed") == 3 and len(statuses(db)) == 4
    assert f"run {run_id} digits/" in stdout and expected in stdout


def test_a_local_sweep_trains_on_cuda(tmp_path):
    """The CUDA path of the local executor: runs placed on the GPU, device and GPU recorded."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here (CUDA paths run where torch sees a GPU)")
    db, sweep_file = tmp_path / "g.db", write(tmp_path, epochs=2)
    result = invoke("sweep", sweep_file, "--workers", "2", "--device", "cuda", "--db", db)
    assert result.exit_code == 0, result.output
    with Session(create_db_engine(f"sqlite:///{db}")) as session:
        runs = session.scalars(select(Run)).all()
    assert len(runs) == 4 and all(r.status == "completed" and r.device == "cuda" and r.gpu_name for r in runs)
