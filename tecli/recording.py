"""A run's life in the database: inserted before training, one short transaction
per finished epoch, a heartbeat while it trains, and its final status.

A run that dies without saying so (kill -9, power loss) stays `running` in the
database. The next time any tecli command opens the database it marks such a run
`interrupted` when its process is gone: on the same host, when its pid no longer
exists or now belongs to a process started after the run; on another host, when
its heartbeat is older than STALE_AFTER (a live run beats every HEARTBEAT_SECONDS
from a background thread, also in the middle of a long epoch).
Finished epochs are never touched.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import socket
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from importlib.metadata import PackageNotFoundError, version

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from tecli import __version__
from tecli.epoch import EpochResult
from tecli.spec import RunSpec
from tecli.store import Epoch, Run, utcnow

HEARTBEAT_SECONDS = 30.0
STALE_AFTER = timedelta(minutes=5)


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def insert_run(
    engine: Engine,
    spec: RunSpec,
    data_copy: str,
    device: str,
    threads: int | None,
    sweep_id: int | None = None,
) -> int:
    """Record a run as `running` before its first epoch; returns its id."""
    run = Run(
        run_key=spec.run_key(),
        sweep_id=sweep_id,
        dataset=spec.dataset,
        data_copy=data_copy,
        variant=spec.variant,
        seed=spec.seed,
        epochs_planned=spec.epochs,
        config=spec.to_dict(),
        status="running",
        host=socket.gethostname(),
        pid=os.getpid(),
        device=device,
        threads=threads,
        tecli_version=__version__,
        torch_version=_package_version("torch"),
        torchvision_version=_package_version("torchvision"),
        numba_version=_package_version("numba"),
        python_version=platform.python_version(),
    )
    with Session(engine) as session, session.begin():
        session.add(run)
        session.flush()
        return run.id


def record_epoch(engine: Engine, run_id: int, result: EpochResult) -> None:
    """Store one finished epoch in its own transaction."""
    with Session(engine) as session, session.begin():
        session.add(Epoch(run_id=run_id, **dataclasses.asdict(result)))
        session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow()))


def finish_run(engine: Engine, run_id: int, status: str, error: str | None = None, only_if_running: bool = False) -> None:
    """Set the final status; with only_if_running, leave a run that already has one alone."""
    query = update(Run).where(Run.id == run_id)
    if only_if_running:
        query = query.where(Run.status == "running")
    with Session(engine) as session, session.begin():
        session.execute(query.values(status=status, error=error, finished_at=utcnow(), heartbeat_at=utcnow()))


class Heartbeat:
    """Context manager: a daemon thread refreshes the run's heartbeat_at until exit."""

    def __init__(self, engine: Engine, run_id: int, interval: float = HEARTBEAT_SECONDS):
        self._engine = engine
        self._run_id = run_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                with Session(self._engine) as session, session.begin():
                    session.execute(update(Run).where(Run.id == self._run_id).values(heartbeat_at=utcnow()))
            except SQLAlchemyError:
                pass  # a busy database must not end the beat; the next one tries again

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _process_started(pid: int) -> float | None:
    """Start time (epoch seconds) of a process from /proc, or None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in clock ticks


def _run_process_alive(pid: int, run_started: datetime) -> bool:
    """Is the run's process still there? A pid reused by a later process does not count."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    started = _process_started(pid)
    return started is None or started <= run_started.replace(tzinfo=timezone.utc).timestamp() + 5


def mark_dead_runs(engine: Engine) -> list[int]:
    """Mark `running` runs whose process is gone or whose heartbeat is stale as interrupted."""
    host = socket.gethostname()
    stale_before = utcnow() - STALE_AFTER
    with Session(engine) as session, session.begin():
        running = session.execute(
            select(Run.id, Run.host, Run.pid, Run.started_at, Run.heartbeat_at).where(Run.status == "running")
        ).all()
        dead = [
            run_id
            for run_id, run_host, pid, started_at, heartbeat_at in running
            if (not _run_process_alive(pid, started_at) if run_host == host else heartbeat_at < stale_before)
        ]
        if dead:
            session.execute(
                update(Run)
                .where(Run.id.in_(dead), Run.status == "running")
                .values(status="interrupted", finished_at=utcnow(), error="process ended without finishing the run")
            )
    return dead
