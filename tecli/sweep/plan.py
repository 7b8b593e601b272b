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
    epochs_done: int = 0  # resume: the last finished epoch, where the run continues

    @property
    def label(self) -> str:
        return f"{self.spec.dataset}/{self.spec.variant}/seed {self.spec.seed}"


@dataclass(frozen=True)
class PastRun:
    """A recorded run of a key: its status and, if it has one, its checkpoint's code and epoch."""

    status: str
    checkpoint_code: str | None = None
    checkpoint_epoch: int | None = None


def history(
    engine: Engine, keys: list[str], checkpoints: bool = True, dead: frozenset[int] = frozenset()
) -> dict[str, list[PastRun]]:
    """Each key's recorded runs in id order. `dead`: ids of running runs whose owner is gone,
    taken as interrupted (as open_database marks them). checkpoints=False: a database from
    before checkpoints (schema 0001, read without upgrading it)."""
    query = select(Run.id, Run.run_key, Run.status).where(Run.run_key.in_(keys)).order_by(Run.id)
    if checkpoints:
        query = query.add_columns(Checkpoint.code_version, Checkpoint.epoch)
        query = query.outerjoin(Checkpoint, Checkpoint.run_id == Run.id)
    with Session(engine) as session:
        rows = session.execute(query).all()
    past: dict[str, list[PastRun]] = {}
    for run_id, key, status, *checkpoint in rows:
        status = RunStatus.INTERRUPTED if run_id in dead else status
        past.setdefault(key, []).append(PastRun(status, *checkpoint))
    return past


def plan(engine: Engine, sweep: SweepSpec, retry_failed: bool, resume: bool = True) -> list[PlannedRun]:
    """The sweep's runs against the database (open_database: at the newest schema, dead runs marked)."""
    return plan_from(sweep, history(engine, [spec.run_key() for spec in sweep.runs]), retry_failed, resume)


def plan_from(
    sweep: SweepSpec, past: dict[str, list[PastRun]], retry_failed: bool, resume: bool = True
) -> list[PlannedRun]:
    """The sweep's runs given each key's recorded runs (the resume rules above)."""
    code = code_version()

    def planned(spec: RunSpec) -> PlannedRun:
        key = spec.run_key()
        runs = past.get(key, [])
        statuses = [run.status for run in runs]
        if RunStatus.COMPLETED in statuses:
            return PlannedRun(spec, key, "done")
        if RunStatus.RUNNING in statuses:
            return PlannedRun(spec, key, "running")
        if statuses and statuses[-1] == RunStatus.FAILED and not retry_failed:
            return PlannedRun(spec, key, "failed")
        if resume and statuses and statuses[-1] == RunStatus.INTERRUPTED and runs[-1].checkpoint_code == code:
            return PlannedRun(spec, key, "resume", runs[-1].checkpoint_epoch or 0)
        return PlannedRun(spec, key, "to run")

    return [planned(spec) for spec in sweep.runs]


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
