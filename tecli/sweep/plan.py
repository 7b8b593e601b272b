"""A sweep's plan against the database: which runs of the grid are done, running, failed or to run.

Resume rules, per run key (the hash of the complete run specification):
- a `completed` run exists            -> done, skipped
- a run is `running` (alive elsewhere) -> skipped, another process is on it
- the newest run `failed`              -> skipped unless --retry-failed (then started over)
- the newest run `interrupted`, with a checkpoint -> resume: it continues from its last
  finished epoch (--restart: started over, a new row from epoch 1)
- never run, or interrupted before its first epoch ended -> to run
Interrupted runs are taken up by default because an interruption (Ctrl-C, a killed
sweep, a power cut) says nothing about the run; a failure usually repeats. A
checkpoint written by other code is not resumed: that run is started over.

The plan is a snapshot: several sweeps of one file may share the grid, so each run
is taken by claiming its key when a worker starts it (tecli.db.recording).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tecli.conditions import code_version
from tecli.db.schema import Checkpoint, Run, RunStatus, Sweep
from tecli.spec import RunSpec
from tecli.sweep.file import SweepSpec


@dataclass(frozen=True)
class PlannedRun:
    spec: RunSpec
    key: str
    state: str  # done | running | failed | resume | to run

    @property
    def label(self) -> str:
        return f"{self.spec.dataset}/{self.spec.variant}/seed {self.spec.seed}"


def plan(engine: Engine, sweep: SweepSpec, retry_failed: bool, resume: bool = True) -> list[PlannedRun]:
    keys = [spec.run_key() for spec in sweep.runs]
    with Session(engine) as session:
        rows = session.execute(
            select(Run.run_key, Run.status, Checkpoint.code_version)
            .outerjoin(Checkpoint, Checkpoint.run_id == Run.id)
            .where(Run.run_key.in_(keys))
            .order_by(Run.id)
        ).all()
    history: dict[str, list[tuple[str, str | None]]] = {}
    for key, status, checkpoint_code in rows:
        history.setdefault(key, []).append((status, checkpoint_code))
    code = code_version()

    def state(key: str) -> str:
        statuses = [status for status, _ in history.get(key, [])]
        if RunStatus.COMPLETED in statuses:
            return "done"
        if RunStatus.RUNNING in statuses:
            return "running"
        if statuses and statuses[-1] == RunStatus.FAILED and not retry_failed:
            return "failed"
        if resume and statuses and statuses[-1] == RunStatus.INTERRUPTED and history[key][-1][1] == code:
            return "resume"
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
