"""Sweep files, database look-ups and ports shared by the sweep tests (test_sweep.py, test_ray.py)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from tecli.cli import app
from tecli.db.schema import Epoch, Run
from tecli.db.store import create_db_engine, open_database

TINY = """
name = "tiny"
seeds = [0, 1]

[defaults]
epochs = {epochs}
lr = 0.05

[defaults.te]
window = 128

[datasets.digits]
target = 0.8
{extra}
[variants.baseline]
te = false

[variants.te]
te = true
lam = 2.0
"""


def write(tmp_path, epochs=2, extra="", name="tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(TINY.format(epochs=epochs, extra=extra))
    return path


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux: /proc)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()]


def statuses(db) -> list[tuple[str, str, int, str]]:
    with Session(open_database(db)) as session:
        return session.execute(select(Run.dataset, Run.variant, Run.seed, Run.status).order_by(Run.id)).all()


def count(db, status) -> int:
    """Runs in `status`; 0 while the database has no schema yet."""
    try:
        with Session(create_db_engine(db)) as session:
            return session.scalar(select(func.count()).select_from(Run).where(Run.status == status))
    except DBAPIError:  # no schema yet
        return 0


def running_before(db, epochs: int) -> int:
    """Running runs that have recorded fewer than `epochs` epochs: far enough from their
    end that a stop sent now finds them training; 0 while the database has no schema."""
    done = select(func.count()).select_from(Epoch).where(Epoch.run_id == Run.id).scalar_subquery()
    try:
        with Session(create_db_engine(db)) as session:
            return session.scalar(select(func.count()).select_from(Run).where(Run.status == "running", done < epochs))
    except DBAPIError:
        return 0


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (as of now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sigterm_when_running(command: list[str], db, running: int = 2) -> tuple[int, str, str]:
    """Start the sweep `command`, send it SIGTERM once `running` of its runs are training in
    `db`: (exit code, stdout, stderr)."""
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while count(db, "running") < running:
            assert sweep.poll() is None and time.monotonic() < deadline, "the sweep did not start its runs"
            time.sleep(0.05)
        sweep.send_signal(signal.SIGTERM)
        stdout, stderr = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()
    return sweep.returncode, stdout, stderr
