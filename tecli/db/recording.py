"""A run's life in the database: claimed before training, one short transaction per
finished epoch (with the run's checkpoint), a heartbeat while it trains, its final
status, and resumes.

Claims: the `claims` table has one row per run key, naming the run that holds it.
A run is created, or resumed, and takes the key in one transaction, so two
processes, on one machine or many, can never both train a key: the key's primary
key rejects a second insert, and taking a key over (a new run after an
interrupted one, or a resume) is a compare-and-set on the claim's version. A
sweep also refuses a key that has a completed run; `tecli run` may train a
completed key again (a new run, history kept).

Resumes continue the same run row from its checkpoint; each process's stretch of
a run is a row of `attempts` (where, when, from which epoch, how it ended).

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
from collections.abc import Callable
from datetime import datetime
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from tecli import __version__
from tecli.conditions import Conditions
from tecli.db.liveness import Lease, Owner, current_owner, is_dead
from tecli.db.schema import Checkpoint, Claim, Epoch, Observation, Run, RunAttempt, RunStatus, utcnow
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


class ResumeRefused(Exception):
    """`tecli run --resume`: the run cannot be resumed (the message says why and what to do)."""


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


@dataclass(frozen=True)
class Attempt:
    """A claimed run as this process holds it: the owner token fences its writes; a
    resumed run comes with the checkpoint it continues from."""

    run_id: int
    owner: str
    code_version: str = ""
    checkpoint: bytes | None = None  # None: training starts at epoch 1
    data_copy: str | None = None  # a resumed run's: the copy of the data its epochs so far read
    epochs_done: int = 0  # a resumed run's: the epoch its checkpoint holds


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
        memory_format=conditions.memory_format,
        cpu_model=conditions.cpu_model,
        code_version=conditions.code_version,
        code_commit=conditions.code_commit,
        code_dirty=conditions.code_dirty,
        observe=conditions.observe,
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


def _retrying(engine: Engine, what: str, take: Callable[[Session, datetime], Attempt]) -> Attempt:
    """take(session, now) in one transaction, again while other processes win the race for the key."""
    for _ in range(CLAIM_TRIES):
        try:
            with Session(engine) as session, session.begin():
                return take(session, _now(session))
        except (IntegrityError, _Lost):
            continue
    raise RuntimeError(f"could not {what}: {CLAIM_TRIES} tries lost to other processes")


def _new_attempt(run_id: int, number: int, first_epoch: int, owner: Owner, conditions: Conditions, now) -> RunAttempt:
    return RunAttempt(
        run_id=run_id, number=number, first_epoch=first_epoch, status=RunStatus.RUNNING, started_at=now,
        owner=owner.token, host=owner.host, pid=owner.pid, device=conditions.device, gpu_name=conditions.gpu_name,
        threads=conditions.threads, memory_format=conditions.memory_format, cpu_model=conditions.cpu_model,
        code_version=conditions.code_version, observe=conditions.observe,
    )  # fmt: skip


def _take_claim(session: Session, key: str, version: int, run_id: int, now) -> None:
    """Compare-and-set on the claim's version; _Lost when another process took it first."""
    moved = session.execute(
        update(Claim).where(Claim.run_key == key, Claim.version == version).values(run_id=run_id, version=version + 1, claimed_at=now)
    ).rowcount
    if moved != 1:
        raise _Lost


def _continue(session: Session, run: Run, version: int, conditions: Conditions, owner: Owner, lease: Lease, now) -> Attempt:
    """Resume `run` (interrupted or failed) from its checkpoint as a new attempt of this process."""
    checkpoint = session.get(Checkpoint, run.id)
    _take_claim(session, run.run_key, version, run.id, now)
    changed = session.execute(
        update(Run)
        .where(Run.id == run.id, Run.status == run.status)
        .values(
            status=RunStatus.RUNNING, finished_at=None, error=None, heartbeat_at=now, host=owner.host, pid=owner.pid,
            owner=owner.token, boot_id=owner.boot_id, pid_namespace=owner.pid_namespace,
            pid_started=owner.pid_started, lease_seconds=lease.lease_seconds,
        )  # fmt: skip
    ).rowcount
    if changed != 1:
        raise _Lost
    number = session.scalar(select(func.max(RunAttempt.number)).where(RunAttempt.run_id == run.id)) or 0
    session.add(_new_attempt(run.id, number + 1, checkpoint.epoch + 1, owner, conditions, now))
    return Attempt(run.id, owner.token, conditions.code_version, checkpoint.state, run.data_copy, checkpoint.epoch)


def _resumable(session: Session, run: Run, conditions: Conditions) -> bool:
    checkpoint = session.get(Checkpoint, run.id)
    return checkpoint is not None and checkpoint.code_version == conditions.code_version


def claim_run(
    engine: Engine,
    spec: RunSpec,
    conditions: Conditions,
    *,
    sweep_id: int | None = None,
    data_copy: str | None = None,
    rerun_completed: bool = False,
    retry_failed: bool = False,
    resume: bool = False,
    lease: Lease | None = None,
) -> Attempt:
    """Take `spec`'s run key for this process, or raise ClaimRefused.

    Refused: a key held by a live running run; unless rerun_completed (`tecli run`),
    a key with a completed run, and, unless retry_failed, a key whose newest run
    failed (a sweep's resume rules, see tecli.sweep.plan). A holder that is `running`
    but dead (liveness) is marked interrupted first. With resume, an interrupted
    holder (or a failed one, with retry_failed) that has a checkpoint written by this
    code is continued; otherwise a new run starts at epoch 1.
    """
    key = spec.run_key()
    owner = current_owner()
    lease = lease or Lease.from_env()

    def take(session: Session, now) -> Attempt:
        found = session.execute(
            select(Run, Claim.version).join(Claim, Claim.run_id == Run.id).where(Claim.run_key == key)
        ).first()
        holder, version = found if found is not None else (None, 0)
        if holder is not None and holder.status == RunStatus.RUNNING:
            if not is_dead(holder, owner, now) or not _mark_interrupted(session, holder.id, holder.heartbeat_at):
                raise ClaimRefused(key, holder.id, holder.status, holder.host)
            holder.status = RunStatus.INTERRUPTED  # as just written
        if holder is not None and holder.status == RunStatus.FAILED and not (retry_failed or rerun_completed):
            raise ClaimRefused(key, holder.id, holder.status, holder.host)
        if not rerun_completed:
            done = session.scalar(
                select(Run.id).where(Run.run_key == key, Run.status == RunStatus.COMPLETED).limit(1)
            )
            if done is not None:
                raise ClaimRefused(key, done, RunStatus.COMPLETED, "")
        if resume and holder is not None and holder.status == RunStatus.INTERRUPTED and _resumable(session, holder, conditions):
            return _continue(session, holder, version, conditions, owner, lease, now)
        if holder is not None and holder.status != RunStatus.COMPLETED:  # started over: its state is of no more use
            session.execute(delete(Checkpoint).where(Checkpoint.run_id == holder.id))
        run = _new_run(spec, conditions, owner, lease, sweep_id, data_copy)
        run.started_at = run.heartbeat_at = now
        session.add(run)
        session.flush()
        session.add(_new_attempt(run.id, 1, 1, owner, conditions, now))
        if holder is None:
            session.add(Claim(run_key=key, run_id=run.id, version=1, claimed_at=now))
            session.flush()  # IntegrityError when another process inserted the key first
        else:
            _take_claim(session, key, version, run.id, now)
        return Attempt(run.id, owner.token, conditions.code_version)

    return _retrying(engine, f"claim run key {key}", take)


@dataclass(frozen=True)
class Resumable:
    """What `tecli run --resume` needs to know before it sets up: the run's configuration,
    the data copy it read and the epoch its checkpoint holds."""

    config: dict
    data_copy: str | None
    epoch: int
    checkpoint: bytes
    device: str  # the last attempt's: a resume continues on the same device, threads and format by default
    threads: int | None
    memory_format: str | None
    observe: int | None  # and observes as it did (the probe size; None: not observed)


def _resume_target(session: Session, run_id: int, conditions: Conditions, owner: Owner, now) -> tuple[Run, Checkpoint, int]:
    """(run, its checkpoint, its claim's version), or ResumeRefused saying why not."""
    run = session.get(Run, run_id) if 1 <= run_id < 2**31 else None
    if run is None:
        raise ResumeRefused(f"no run with id {run_id}; `tecli runs` lists the recorded runs")
    if run.status == RunStatus.COMPLETED:
        raise ResumeRefused(f"run {run_id} is completed; there is nothing to resume")
    if run.status == RunStatus.RUNNING:
        if not is_dead(run, owner, now) or not _mark_interrupted(session, run.id, run.heartbeat_at):
            raise ResumeRefused(f"run {run_id} is running on {run.host}; it cannot be resumed while it trains")
        run.status = RunStatus.INTERRUPTED
    checkpoint = session.get(Checkpoint, run_id)
    if checkpoint is None:
        raise ResumeRefused(
            f"run {run_id} has no checkpoint (it stopped before its first epoch ended); "
            "start it over with the same `tecli run` options"
        )
    if checkpoint.code_version != conditions.code_version:
        raise ResumeRefused(
            f"run {run_id}'s checkpoint was written by code {checkpoint.code_version} and this is "
            f"{conditions.code_version}; resume it with that code, or start it over"
        )
    version = session.scalar(select(Claim.version).where(Claim.run_key == run.run_key, Claim.run_id == run_id))
    if version is None:
        holder = session.scalar(select(Claim.run_id).where(Claim.run_key == run.run_key))
        raise ResumeRefused(f"run {run_id}'s run key is now held by run {holder}; resume or inspect that one")
    return run, checkpoint, version


def check_resumable(engine: Engine, run_id: int, conditions: Conditions) -> Resumable:
    """The refusals of resume_run, looked at without taking the run (nothing is written)."""
    with Session(engine) as session:
        try:
            run, checkpoint, _ = _resume_target(session, run_id, conditions, current_owner(), _now(session))
            last = session.scalars(
                select(RunAttempt).where(RunAttempt.run_id == run_id).order_by(RunAttempt.number.desc()).limit(1)
            ).first()
            where = last or run
            return Resumable(
                run.config, run.data_copy, checkpoint.epoch, checkpoint.state, where.device, where.threads, where.memory_format,
                where.observe,
            )
        finally:
            session.rollback()


def resume_run(
    engine: Engine, run_id: int, conditions: Conditions, lease: Lease | None = None, from_epoch: int | None = None
) -> Attempt:
    """`tecli run --resume`: continue run `run_id` from its checkpoint as a new attempt of this
    process. ResumeRefused for a completed or live run, a run without a checkpoint, one whose
    checkpoint other code wrote, or one whose key a newer run holds."""
    owner = current_owner()
    lease = lease or Lease.from_env()

    def take(session: Session, now) -> Attempt:
        run, checkpoint, version = _resume_target(session, run_id, conditions, owner, now)
        if from_epoch is not None and checkpoint.epoch != from_epoch:
            raise ResumeRefused(f"run {run_id} moved on to epoch {checkpoint.epoch} meanwhile; resume it again")
        return _continue(session, run, version, conditions, owner, lease, now)

    return _retrying(engine, f"resume run {run_id}", take)


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


def record_epoch(engine: Engine, attempt: Attempt, result: EpochResult, checkpoint: bytes | None = None) -> None:
    """Store one finished epoch (with its observations, when observed), and the run's checkpoint
    after it, in one transaction (with the heartbeat): all are there, or none.

    A number that is not finite (the loss of a diverged run) is stored as NULL on
    every backend, as SQLite would store it anyway."""
    values = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in dataclasses.asdict(result).items()}
    observed = values.pop("observed")
    with Session(engine) as session, session.begin():
        now = _now(session)
        _fenced(session, attempt, heartbeat_at=now)
        session.add(Epoch(run_id=attempt.run_id, **values))
        session.add_all(Observation(run_id=attempt.run_id, epoch=result.epoch, **layer) for layer in observed)
        if checkpoint is not None:  # replace the run's checkpoint (without reading the old one back)
            values = dict(epoch=result.epoch, state=checkpoint, code_version=attempt.code_version, saved_at=now)
            if not session.execute(update(Checkpoint).where(Checkpoint.run_id == attempt.run_id).values(**values)).rowcount:
                session.add(Checkpoint(run_id=attempt.run_id, **values))


def finish_run(engine: Engine, attempt: Attempt, status: RunStatus, error: str | None = None) -> bool:
    """Set the final status if the attempt still holds its run; False when it no longer did."""
    with Session(engine) as session, session.begin():
        now = _now(session)
        changed = session.execute(
            update(Run).where(_owned(attempt)).values(status=status, error=error, finished_at=now, heartbeat_at=now)
        ).rowcount
        if changed:
            _end_attempts(session, attempt.run_id, status, now, error)
    return changed == 1


def _end_attempts(session: Session, run_id: int, status: RunStatus, now, error: str | None) -> None:
    session.execute(
        update(RunAttempt)
        .where(RunAttempt.run_id == run_id, RunAttempt.status == RunStatus.RUNNING)
        .values(status=status, ended_at=now, error=error)
    )


def end_running(engine: Engine, run_id: int, pid: int, status: RunStatus, error: str) -> bool:
    """End a run from outside its process (its worker, `pid` on this host, died or hung and
    was killed, or was stopped without saying so), if that process still holds it: another
    may have resumed it meanwhile."""
    with Session(engine) as session, session.begin():
        now = _now(session)
        changed = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == RunStatus.RUNNING, Run.pid == pid, Run.host == current_owner().host)
            .values(status=status, error=error, finished_at=now)
        ).rowcount
        if changed:
            _end_attempts(session, run_id, status, now, error)
    return changed == 1


class Heartbeat:
    """Context manager: a daemon thread refreshes the run's heartbeat_at until exit."""

    def __init__(self, engine: Engine, attempt: Attempt, interval: float | None = None):
        self._engine = engine
        self._attempt = attempt
        self._interval = interval or Lease.from_env().heartbeat_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{attempt.run_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                with Session(self._engine) as session, session.begin():
                    beat = update(Run).where(_owned(self._attempt)).values(heartbeat_at=_now(session))
                    if session.execute(beat).rowcount == 0:
                        return  # declared dead and taken over: the next record_epoch refuses and stops the run
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
    now = _now(session)
    changed = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.RUNNING, Run.heartbeat_at == heartbeat_at)
        .values(status=RunStatus.INTERRUPTED, finished_at=now, error=DEAD_MESSAGE)
    ).rowcount
    if changed:
        _end_attempts(session, run_id, RunStatus.INTERRUPTED, now, DEAD_MESSAGE)
    return bool(changed)


def _dead_running(session: Session) -> list:
    """The `running` runs whose owner is dead (tecli.db.liveness), as rows with their heartbeat."""
    me, now = current_owner(), _now(session)
    running = session.execute(
        select(
            Run.id, Run.host, Run.boot_id, Run.pid_namespace, Run.pid, Run.pid_started,
            Run.heartbeat_at, Run.lease_seconds,
        ).where(Run.status == RunStatus.RUNNING)
    ).all()  # fmt: skip
    return [run for run in running if is_dead(run, me, now)]


def dead_runs(engine: Engine) -> frozenset[int]:
    """The ids of `running` runs whose owner is dead, found without marking them (a read-only look)."""
    with Session(engine) as session:
        return frozenset(run.id for run in _dead_running(session))


def mark_dead_runs(engine: Engine) -> list[int]:
    """Mark `running` runs whose owner is dead (tecli.db.liveness) as interrupted; returns their ids.

    A run that beat between the look and the write keeps running (compare-and-set on its heartbeat)."""
    with Session(engine) as session, session.begin():
        return [run.id for run in _dead_running(session) if _mark_interrupted(session, run.id, run.heartbeat_at)]


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
