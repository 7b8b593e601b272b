"""A run's life in the database: claimed and inserted before training, one short
transaction per finished epoch, a heartbeat while it trains, and its final status.

Claims: the `claims` table has one row per run key, naming the attempt that holds
it. An attempt is created and takes the key in one transaction (claim_run), so two
processes, on one machine or many, can never both train a key: the key's primary
key rejects a second insert, and taking over a key from a finished attempt is a
compare-and-set on the claim row. A sweep also refuses a key that has a completed
run; `tecli run` may train a completed key again (a new attempt, history kept).

Every later write of the attempt is fenced: it must still be `running` and still
carry its owner token. If another process has declared the owner dead (and may
have taken the key over), the old owner's next write fails with RunTakenOver
instead of writing beside the new one.

A run that dies without saying so (kill -9, power loss) stays `running` until a
tecli command opening the database finds it dead (tecli.db.liveness) and marks it
`interrupted`. Finished epochs are never touched.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import threading
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from sqlalchemy import exists, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from tecli import __version__
from tecli.conditions import Conditions
from tecli.db.liveness import Lease, Owner, current_owner, is_dead
from tecli.db.schema import Claim, Epoch, Run, RunStatus, utcnow
from tecli.epoch import EpochResult
from tecli.spec import RunSpec

CLAIM_TRIES = 50
DEAD_MESSAGE = "process ended without finishing the run"


class ClaimRefused(Exception):
    """The run key is being trained elsewhere, or (in a sweep) is already completed."""

    def __init__(self, key: str, run_id: int, status: str, host: str):
        where = f" on {host}" if status == RunStatus.RUNNING else ""
        super().__init__(f"run key {key} is {status} as run {run_id}{where}")
        self.run_id = run_id
        self.status = status


class RunTakenOver(Exception):
    """This attempt was declared dead and its key taken by another process; it must stop."""


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


@dataclass(frozen=True)
class Attempt:
    """A claimed run: its id and the owner token that fences its writes."""

    run_id: int
    owner: str


def _new_run(spec: RunSpec, conditions: Conditions, owner: Owner, lease: Lease, sweep_id, data_copy) -> Run:
    return Run(
        run_key=spec.run_key(),
        sweep_id=sweep_id,
        dataset=spec.dataset,
        data_copy=data_copy,
        variant=spec.variant,
        seed=spec.seed,
        epochs_planned=spec.epochs,
        config=spec.to_dict(),
        status=RunStatus.RUNNING,
        host=owner.host,
        pid=owner.pid,
        owner=owner.token,
        boot_id=owner.boot_id,
        pid_namespace=owner.pid_namespace,
        pid_started=owner.pid_started,
        lease_seconds=lease.lease_seconds,
        device=conditions.device,
        gpu_name=conditions.gpu_name,
        threads=conditions.threads,
        cpu_model=conditions.cpu_model,
        code_version=conditions.code_version,
        code_commit=conditions.code_commit,
        code_dirty=conditions.code_dirty,
        tecli_version=__version__,
        torch_version=_package_version("torch"),
        torchvision_version=_package_version("torchvision"),
        numba_version=_package_version("numba"),
        python_version=platform.python_version(),
    )


def _now(session: Session):
    """The time heartbeats are written and judged in: the server's clock on PostgreSQL, so
    machines with drifting clocks agree; this machine's on SQLite (one machine's file)."""
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(select(func.timezone("UTC", func.now())))
    return utcnow()


class _Lost(Exception):
    """Another process moved the claim between our read and our write: read again."""


def claim_run(
    engine: Engine,
    spec: RunSpec,
    conditions: Conditions,
    *,
    sweep_id: int | None = None,
    data_copy: str | None = None,
    rerun_completed: bool = False,
    retry_failed: bool = False,
    lease: Lease | None = None,
) -> Attempt:
    """Create a `running` attempt of `spec` holding its run key, or raise ClaimRefused.

    Refused: a key held by a live running attempt; unless rerun_completed (`tecli run`),
    a key with a completed attempt, and, unless retry_failed, a key whose newest attempt
    failed (a sweep's resume rules, see tecli.sweep.plan). A holder that is `running`
    but dead (liveness) is marked interrupted first.
    """
    key = spec.run_key()
    owner = current_owner()
    lease = lease or Lease.from_env()
    for _ in range(CLAIM_TRIES):
        try:
            with Session(engine) as session, session.begin():
                now = _now(session)
                holder = session.execute(
                    select(Run).join(Claim, Claim.run_id == Run.id).where(Claim.run_key == key)
                ).scalar_one_or_none()
                if holder is not None and holder.status == RunStatus.RUNNING:
                    if not is_dead(holder, owner, now) or not _mark_interrupted(session, holder.id, holder.heartbeat_at):
                        raise ClaimRefused(key, holder.id, holder.status, holder.host)
                if holder is not None and holder.status == RunStatus.FAILED and not (retry_failed or rerun_completed):
                    raise ClaimRefused(key, holder.id, holder.status, holder.host)
                if not rerun_completed:
                    done = session.scalar(
                        select(Run.id).where(Run.run_key == key, Run.status == RunStatus.COMPLETED).limit(1)
                    )
                    if done is not None:
                        raise ClaimRefused(key, done, RunStatus.COMPLETED, "")
                run = _new_run(spec, conditions, owner, lease, sweep_id, data_copy)
                run.started_at = run.heartbeat_at = now
                session.add(run)
                session.flush()
                if holder is None:
                    session.add(Claim(run_key=key, run_id=run.id))
                    session.flush()  # IntegrityError when another process inserted the key first
                else:
                    moved = session.execute(
                        update(Claim)
                        .where(Claim.run_key == key, Claim.run_id == holder.id)
                        .values(run_id=run.id, claimed_at=now)
                    ).rowcount
                    if moved != 1:
                        raise _Lost
                return Attempt(run.id, owner.token)
        except (IntegrityError, _Lost):
            continue
    raise RuntimeError(f"could not claim run key {key}: {CLAIM_TRIES} tries lost to other processes")


def _owned(attempt: Attempt):
    """WHERE clause: this attempt's row, still running and still ours."""
    return (Run.id == attempt.run_id) & (Run.owner == attempt.owner) & (Run.status == RunStatus.RUNNING)


def _fenced(session: Session, attempt: Attempt, **values) -> None:
    if session.execute(update(Run).where(_owned(attempt)).values(**values)).rowcount != 1:
        raise RunTakenOver(
            f"run {attempt.run_id} was declared dead and taken over by another process; this attempt stops"
        )


def set_data_copy(engine: Engine, attempt: Attempt, data_copy: str) -> None:
    """Record which copy of the data the run read (a sweep claims before loading data)."""
    with Session(engine) as session, session.begin():
        _fenced(session, attempt, data_copy=data_copy, heartbeat_at=_now(session))


def record_epoch(engine: Engine, attempt: Attempt, result: EpochResult) -> None:
    """Store one finished epoch in its own transaction (with the heartbeat).

    A number that is not finite (the loss of a diverged run) is stored as NULL on
    every backend, as SQLite would store it anyway."""
    values = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in dataclasses.asdict(result).items()}
    with Session(engine) as session, session.begin():
        _fenced(session, attempt, heartbeat_at=_now(session))
        session.add(Epoch(run_id=attempt.run_id, **values))


def finish_run(engine: Engine, attempt: Attempt, status: RunStatus, error: str | None = None) -> bool:
    """Set the final status if the attempt still holds its run; False when it no longer did."""
    with Session(engine) as session, session.begin():
        now = _now(session)
        changed = session.execute(
            update(Run).where(_owned(attempt)).values(status=status, error=error, finished_at=now, heartbeat_at=now)
        ).rowcount
    return changed == 1


def fail_running(engine: Engine, run_id: int, error: str) -> bool:
    """Mark a run failed from outside its process (its worker died silently), if still running."""
    with Session(engine) as session, session.begin():
        changed = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == RunStatus.RUNNING)
            .values(status=RunStatus.FAILED, error=error, finished_at=utcnow())
        ).rowcount
    return changed == 1


class Heartbeat:
    """Context manager: a daemon thread refreshes the run's heartbeat_at until exit."""

    def __init__(self, engine: Engine, attempt: Attempt, interval: float | None = None):
        self._engine = engine
        self._attempt = attempt
        self._interval = interval or Lease.from_env().heartbeat_seconds
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{attempt.run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                with Session(self._engine) as session, session.begin():
                    beat = update(Run).where(_owned(self._attempt)).values(heartbeat_at=_now(session))
                    if session.execute(beat).rowcount == 0:
                        self.lost.set()  # declared dead and taken over: record_epoch will refuse
                        return
            except SQLAlchemyError:
                pass  # a busy or unreachable database must not end the beat; the next one tries again

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _mark_interrupted(session: Session, run_id: int, heartbeat_at) -> bool:
    """Compare-and-set: interrupted only if still running with the heartbeat that was judged."""
    return bool(
        session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == RunStatus.RUNNING, Run.heartbeat_at == heartbeat_at)
            .values(status=RunStatus.INTERRUPTED, finished_at=_now(session), error=DEAD_MESSAGE)
        ).rowcount
    )


def mark_dead_runs(engine: Engine) -> list[int]:
    """Mark `running` runs whose owner is dead (tecli.db.liveness) as interrupted; returns their ids.

    A run that beat between the look and the write keeps running (compare-and-set on its heartbeat)."""
    me = current_owner()
    with Session(engine) as session, session.begin():
        now = _now(session)
        running = session.execute(
            select(
                Run.id, Run.host, Run.boot_id, Run.pid_namespace, Run.pid, Run.pid_started,
                Run.heartbeat_at, Run.lease_seconds,
            ).where(Run.status == RunStatus.RUNNING)
        ).all()  # fmt: skip
        return [run.id for run in running if is_dead(run, me, now) and _mark_interrupted(session, run.id, run.heartbeat_at)]


def key_taken(engine: Engine, key: str) -> bool:
    """Cheap look before starting a worker: does a running or completed attempt hold the key?"""
    with Session(engine) as session:
        return bool(
            session.scalar(
                select(
                    exists().where(
                        Run.run_key == key, Run.status.in_((RunStatus.RUNNING, RunStatus.COMPLETED))
                    )
                )
            )
        )
