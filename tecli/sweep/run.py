"""A sweep as a library call: plan it (file validated, database opened, resume rules
applied), then run what is left on an executor. `tecli sweep` parses its options, calls
these two and prints; a Python user calls them directly:

    from tecli.sweep.run import plan_sweep, run_sweep

    sweep = plan_sweep("experiments.toml", db="tecli.db")
    result = run_sweep(sweep, workers=2)
    print(result.counts())
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError

from tecli.errors import UserError
from tecli.sweep.executors import Event, Executor, LocalProcesses, Task
from tecli.sweep.file import SweepSpec
from tecli.sweep.plan import PlannedRun

TO_TRAIN = ("to run", "resume")


class SweepDatabaseError(Exception):
    """The database failed in the middle of a sweep; its workers were stopped."""


@dataclass
class SweepPlan:
    """A validated sweep against its database: what is done and what is left."""

    spec: SweepSpec
    url: URL
    engine: Engine
    planned: list[PlannedRun]
    device: str
    threads: int | None
    retry_failed: bool
    restart: bool

    @property
    def to_run(self) -> list[PlannedRun]:
        return [p for p in self.planned if p.state in TO_TRAIN]


@dataclass
class SweepResult:
    outcomes: dict[int, Event] = field(default_factory=dict)  # index in to_run -> its finished event
    interrupted: bool = False  # Ctrl-C or SIGTERM stopped it; the same call resumes

    def counts(self) -> Counter:
        """completed / failed / interrupted / skipped (claimed elsewhere) among the runs it started."""
        return Counter(event.status for event in self.outcomes.values())


def plan_sweep(
    file: str | os.PathLike,
    db: str | os.PathLike | None = None,
    *,
    retry_failed: bool = False,
    restart: bool = False,
    device: str = "cpu",
    threads: int | None = None,
) -> SweepPlan:
    """Validate the file and the settings (UserError, before anything is written), open or
    create the database, and plan the grid."""
    from tecli.db.liveness import Lease
    from tecli.db.store import database_url, open_database
    from tecli.runner import configure
    from tecli.sweep.file import load_sweep
    from tecli.sweep.plan import plan

    spec = load_sweep(Path(file))
    url = database_url(db)
    Lease.from_env()
    configure(device, threads)  # check device and threads before anything is recorded
    engine = open_database(url)
    planned = plan(engine, spec, retry_failed, resume=not restart)
    return SweepPlan(spec, url, engine, planned, device, threads, retry_failed, restart)


def run_sweep(
    sweep: SweepPlan,
    *,
    workers: int = 1,
    data_dir: str | os.PathLike | None = None,
    on_event: Callable[[Event], None] | None = None,
    executor: Executor | None = None,
) -> SweepResult:
    """Train what the plan left, `workers` runs at a time (each with cores / workers CPU
    threads unless the plan sets threads). Ctrl-C or SIGTERM stops it cleanly (the running
    runs record themselves interrupted); SweepDatabaseError if the database fails."""
    from tecli.db.store import describe, first_line
    from tecli.runner import sigterm_as_interrupt
    from tecli.sweep.plan import register

    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    sweep_id = register(sweep.engine, sweep.spec)
    per_run_threads = sweep.threads or max(1, (os.cpu_count() or 1) // workers)
    folder = Path(data_dir) if data_dir is not None else None
    tasks = [
        Task(i, p.spec, sweep.url, sweep_id, folder, sweep.device, per_run_threads, sweep.retry_failed, not sweep.restart)
        for i, p in enumerate(sweep.to_run)
    ]
    result = SweepResult()

    def report(event: Event) -> None:
        if event.kind == "finished":
            result.outcomes[event.index] = event
        if on_event:
            on_event(event)

    with sigterm_as_interrupt():
        try:
            (executor or LocalProcesses(workers)).run(tasks, report)
        except KeyboardInterrupt:
            result.interrupted = True
        except DBAPIError as error:
            raise SweepDatabaseError(f"cannot use the database {describe(sweep.url)}: {first_line(error.orig)}") from None
    return result
