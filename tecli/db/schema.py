"""The results database's tables as SQLAlchemy models, and the states a run goes through.

No torch and no engine set-up here (that is store.py): `tecli runs` and
`tecli report` read these tables without either. Schema changes are made by
Alembic migrations in tecli/db/migrations; a test keeps the two equal.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class RunStatus(enum.StrEnum):
    """A run's state. Stored as its plain string, so the database stays readable by anyone."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


def utcnow() -> datetime:
    """Naive UTC: the form every timestamp column holds."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Sweep(Base):
    __tablename__ = "sweeps"
    __table_args__ = (UniqueConstraint("name", "source_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    source: Mapped[str] = mapped_column(Text)  # the sweep file's full text
    source_hash: Mapped[str] = mapped_column(String(64))  # sha256 of source
    targets: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # data set -> {target, metric}
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    runs: Mapped[list[Run]] = relationship(back_populates="sweep")


class Run(Base):
    """One training of a run key, from epoch 1 (a resume continues the same row; a
    restart is a new row). Its current owner (host .. lease_seconds) decides liveness
    (tecli.db.liveness); the conditions (device .. code_dirty) are its first attempt's,
    and `attempts` holds every attempt's."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_key: Mapped[str] = mapped_column(String(64), index=True)  # RunSpec.run_key(); one row per attempt
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id", ondelete="SET NULL"), index=True)
    dataset: Mapped[str] = mapped_column(String(64), index=True)
    data_copy: Mapped[str | None] = mapped_column(String(200))  # which copy of the data was read; None before set-up
    variant: Mapped[str] = mapped_column(String(100), index=True)
    seed: Mapped[int] = mapped_column(Integer)
    epochs_planned: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # the complete RunSpec
    status: Mapped[str] = mapped_column(String(16), index=True)  # a RunStatus
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # The owner: the process training this attempt.
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    owner: Mapped[str | None] = mapped_column(String(32))  # random token of the owning process
    boot_id: Mapped[str | None] = mapped_column(String(64))  # the kernel's boot id: same machine, same boot
    pid_namespace: Mapped[str | None] = mapped_column(String(64))  # e.g. "pid:[4026531836]"
    pid_started: Mapped[int | None] = mapped_column(BigInteger)  # process start, clock ticks since boot
    lease_seconds: Mapped[float | None] = mapped_column(Float)  # heartbeat older than this: the owner is gone
    # Conditions of measurement.
    device: Mapped[str] = mapped_column(String(32))
    gpu_name: Mapped[str | None] = mapped_column(String(200))
    threads: Mapped[int | None] = mapped_column(Integer)  # torch's CPU threads, as used
    memory_format: Mapped[str | None] = mapped_column(String(20))  # channels_last or contiguous (all runs before 0003)
    cpu_model: Mapped[str | None] = mapped_column(String(200))
    code_version: Mapped[str | None] = mapped_column(String(100))  # src:<hash of tecli's sources> (tecli.conditions)
    code_commit: Mapped[str | None] = mapped_column(String(64))  # git commit, when run from a checkout
    code_dirty: Mapped[bool | None] = mapped_column(Boolean)  # uncommitted changes in tecli/; None outside a checkout
    observe: Mapped[int | None] = mapped_column(Integer)  # probe size of --observe (tecli.observe); None: not observed
    tecli_version: Mapped[str] = mapped_column(String(32))
    torch_version: Mapped[str] = mapped_column(String(32))
    torchvision_version: Mapped[str] = mapped_column(String(32))
    numba_version: Mapped[str] = mapped_column(String(32))
    python_version: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)

    sweep: Mapped[Sweep | None] = relationship(back_populates="runs")
    attempts: Mapped[list[RunAttempt]] = relationship(order_by="RunAttempt.number", passive_deletes=True)
    epochs: Mapped[list[Epoch]] = relationship(
        back_populates="run", order_by="Epoch.epoch", cascade="all, delete-orphan", passive_deletes=True
    )


class Claim(Base):
    """One row per run key: the run that holds it. The primary key is the rule that no
    key is trained twice at once; a run takes a key in the same transaction that creates
    or resumes it, by compare-and-set on `version` (tecli.db.recording)."""

    __tablename__ = "claims"

    run_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)  # +1 each time the key is taken
    claimed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class RunAttempt(Base):
    """One process's stretch of a run: a run interrupted and resumed from its checkpoint
    has several, each with where it ran, from which epoch, how it ended, and the
    conditions it measured its epochs under."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("run_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... in the order they ran
    first_epoch: Mapped[int] = mapped_column(Integer)  # the first epoch this attempt trained
    status: Mapped[str] = mapped_column(String(16))  # a RunStatus: running, or how it ended
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    owner: Mapped[str | None] = mapped_column(String(32))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(32))
    gpu_name: Mapped[str | None] = mapped_column(String(200))
    threads: Mapped[int | None] = mapped_column(Integer)
    memory_format: Mapped[str | None] = mapped_column(String(20))
    cpu_model: Mapped[str | None] = mapped_column(String(200))
    code_version: Mapped[str | None] = mapped_column(String(100))
    observe: Mapped[int | None] = mapped_column(Integer)  # probe size; a resume observes as the last attempt did
    error: Mapped[str | None] = mapped_column(Text)  # why it ended, when not completed


class Checkpoint(Base):
    """A run's latest training state, written with each epoch in that epoch's transaction
    and replaced by the next, so any worker that reaches the database can resume the run;
    a completed run's is its final model."""

    __tablename__ = "checkpoints"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)  # the last finished epoch it holds
    state: Mapped[bytes] = mapped_column(LargeBinary)
    code_version: Mapped[str] = mapped_column(String(100))
    saved_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Epoch(Base):
    __tablename__ = "epochs"
    __table_args__ = (UniqueConstraint("run_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)  # 1-based
    train_loss: Mapped[float | None] = mapped_column(Float)  # None: not finite (the run diverged)
    train_acc: Mapped[float] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_acc: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)  # epoch wall time, TE work and test evaluation included
    te_seconds: Mapped[float] = mapped_column(Float)
    te_mean: Mapped[float | None] = mapped_column(Float)
    te_max: Mapped[float | None] = mapped_column(Float)
    # NULL in epochs recorded before 0004 (and, for the diagnostics, in a baseline's epochs).
    cpu_seconds: Mapped[float | None] = mapped_column(Float)  # process CPU time over the span of `seconds`
    source_fire_rate: Mapped[float | None] = mapped_column(Float)  # feedback diagnostics: see tecli.epoch
    target_fire_rate: Mapped[float | None] = mapped_column(Float)
    te_positive_share: Mapped[float | None] = mapped_column(Float)
    factor_dev_mean: Mapped[float | None] = mapped_column(Float)
    factor_dev_max: Mapped[float | None] = mapped_column(Float)  # 0: the feedback changed nothing that epoch
    observe_seconds: Mapped[float | None] = mapped_column(Float)  # --observe: the observation's time, not part of `seconds`
    recorded_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    run: Mapped[Run] = relationship(back_populates="epochs")


class Observation(Base):
    """One layer's information measures on a run's probe set after one epoch (`tecli run
    --observe`; tecli.epoch.LayerObservation says what each column is). Written in the
    epoch's transaction, with its row of `epochs`."""

    __tablename__ = "observations"
    __table_args__ = (UniqueConstraint("run_id", "epoch", "layer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    layer: Mapped[str] = mapped_column(String(32))  # conv1, ..., fc1, fc2, class
    position: Mapped[int] = mapped_column(Integer)  # 0-based, input to output
    neurons: Mapped[int] = mapped_column(Integer)
    neuron_entropy: Mapped[float] = mapped_column(Float)  # bits
    h_t: Mapped[float] = mapped_column(Float)
    i_ty: Mapped[float] = mapped_column(Float)
    te_next: Mapped[float | None] = mapped_column(Float)  # NULL for conv blocks and the class layer
    te_class: Mapped[float | None] = mapped_column(Float)
