"""A sweep's plan against the database: which runs of the grid are done, running, failed or to run.

Resume rules, per run key (the hash of the complete run specification):
- a `completed` run exists            -> done, skipped
- a run is `running` (alive elsewhere) -> skipped, another process is on it
- the newest attempt `failed`          -> skipped unless --retry-failed
- never run, or `interrupted`          -> to run (a retry is a new row: history is kept)
Interrupted runs are retried by default because an interruption (Ctrl-C, a killed
sweep, a power cut) says nothing about the run; a failure usually repeats.
Runs restart from epoch 1; there are no mid-run checkpoints.

The plan is a snapshot: several sweeps of one file may share the grid, so each run
is taken by claiming its key when a worker starts it (tecli.db.recording).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tecli.db.schema import Run, RunStatus, Sweep
from tecli.spec import RunSpec
from tecli.sweep.file import SweepSpec


@dataclass(frozen=True)
class PlannedRun:
    spec: RunSpec
    key: str
    state: str  # done | running | failed | to run

    @property
    def label(self) -> str:
        return f"{self.spec.dataset}/{self.spec.variant}/seed {self.spec.seed}"


def plan(engine: Engine, sweep: SweepSpec, retry_failed: bool) -> list[PlannedRun]:
    keys = [spec.run_key() for spec in sweep.runs]
    with Session(engine) as session:
        rows = session.execute(
            select(Run.run_key, Run.status).where(Run.run_key.in_(keys)).order_by(Run.id)
        ).all()
    history: dict[str, list[str]] = {}
    for key, status in rows:
        history.setdefault(key, []).append(status)

    def state(key: str) -> str:
        statuses = history.get(key, [])
        if RunStatus.COMPLETED in statuses:
            return "done"
        if RunStatus.RUNNING in statuses:
            return "running"
        if statuses and statuses[-1] == RunStatus.FAILED and not retry_failed:
            return "failed"
        return "to run"

    return [PlannedRun(spec, key, state(key)) for spec, key in zip(sweep.runs, keys)]


def register(engine: Engine, sweep: SweepSpec) -> int:
    """The sweep's row (name + file hash), created on first use; returns its id.

    Sweeps of one file started together race to create the row: the unique
    (name, hash) lets one win, and the others read its row."""
    find = select(Sweep.id).where(Sweep.name == sweep.name, Sweep.source_hash == sweep.source_hash)
    for _ in range(2):
        try:
            with Session(engine) as session, session.begin():
                found = session.scalar(find)
                if found is not None:
                    return found
                row = Sweep(name=sweep.name, source=sweep.source, source_hash=sweep.source_hash, targets=sweep.targets)
                session.add(row)
                session.flush()
                return row.id
        except IntegrityError:
            continue
    raise RuntimeError(f"cannot register sweep {sweep.name!r}")
