"""The results database: SQLAlchemy models, engine set-up and schema upgrades.

No torch here: `tecli runs` and `tecli report` read the database without it.
The location is `--db`, else TECLI_DB, else `tecli.db` in the working folder; a
plain path means an SQLite file, anything with `://` is an SQLAlchemy URL (for
example postgresql+psycopg://user@host/db). The schema lives in Alembic
migrations (migrations/); a database is upgraded to the newest revision the first
time tecli opens it.

SQLite is set up for several writer processes: WAL journal, a 30 s busy timeout,
foreign keys on, and every transaction starts with BEGIN IMMEDIATE so two
writers queue on the lock instead of failing on a read-to-write upgrade.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from tecli.errors import UserError
from tecli.paths import writable_folder

DEFAULT_DB = "tecli.db"
# The newest migration in migrations/versions (a test keeps the two equal). Knowing it
# here lets an up-to-date database open without importing Alembic.
SCHEMA_HEAD = "0001"
BUSY_TIMEOUT_MS = 30_000
RUN_STATUSES = ("running", "completed", "failed", "interrupted")


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
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_key: Mapped[str] = mapped_column(String(64), index=True)  # RunSpec.run_key(); one row per attempt
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id", ondelete="SET NULL"), index=True)
    dataset: Mapped[str] = mapped_column(String(64), index=True)
    data_copy: Mapped[str] = mapped_column(String(200))  # which copy of the data was read
    variant: Mapped[str] = mapped_column(String(100), index=True)
    seed: Mapped[int] = mapped_column(Integer)
    epochs_planned: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # the complete RunSpec
    status: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(32))
    threads: Mapped[int | None] = mapped_column(Integer)
    tecli_version: Mapped[str] = mapped_column(String(32))
    torch_version: Mapped[str] = mapped_column(String(32))
    torchvision_version: Mapped[str] = mapped_column(String(32))
    numba_version: Mapped[str] = mapped_column(String(32))
    python_version: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)

    sweep: Mapped[Sweep | None] = relationship(back_populates="runs")
    epochs: Mapped[list[Epoch]] = relationship(
        back_populates="run", order_by="Epoch.epoch", cascade="all, delete-orphan", passive_deletes=True
    )


class Epoch(Base):
    __tablename__ = "epochs"
    __table_args__ = (UniqueConstraint("run_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)  # 1-based
    train_loss: Mapped[float] = mapped_column(Float)
    train_acc: Mapped[float] = mapped_column(Float)
    test_loss: Mapped[float] = mapped_column(Float)
    test_acc: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)  # epoch wall time, TE work and test evaluation included
    te_seconds: Mapped[float] = mapped_column(Float)
    te_mean: Mapped[float | None] = mapped_column(Float)
    te_max: Mapped[float | None] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    run: Mapped[Run] = relationship(back_populates="epochs")


def database_url(db: str | os.PathLike | None = None) -> str:
    """The SQLAlchemy URL for --db / TECLI_DB / ./tecli.db, checked without connecting."""
    value = str(db) if db else os.environ.get("TECLI_DB") or DEFAULT_DB
    if "://" in value:
        try:
            url = make_url(value)
            url.get_dialect()
        except (ArgumentError, NoSuchModuleError, ValueError) as error:
            raise UserError(f"--db {value!r} is not a usable SQLAlchemy URL ({error}); pass a file path or a URL such as sqlite:///tecli.db") from None
        return value
    path = Path(value).expanduser().absolute()
    folder = path.parent
    if path.is_dir():
        raise UserError(f"--db {value} is a folder; pass a database file path such as {path / DEFAULT_DB}")
    if not folder.is_dir():
        raise UserError(f"cannot create the database {path}: folder {folder} does not exist; create it or pass another --db")
    if not writable_folder(folder):
        raise UserError(f"cannot write the database {path}: folder {folder} is not writable; pass another --db or set TECLI_DB")
    return f"sqlite:///{path}"


def _use_wal(cursor) -> None:
    """Switch the file to WAL (persistent, so once per file). Switching needs the file to
    itself and may answer "locked" at once, without waiting, while a new file is opened
    by several processes together; so it is retried for up to the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous = FULL")  # a committed epoch survives a power cut
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_db_engine(db: str | os.PathLike | None = None) -> Engine:
    """An engine for the database, with SQLite's concurrency settings; no schema work."""
    url = database_url(db)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        _sqlite_setup(engine)
    return engine


def open_database(db: str | os.PathLike | None = None) -> Engine:
    """Engine for the database, upgraded to the newest schema, with dead runs marked interrupted."""
    from tecli.recording import mark_dead_runs

    engine = create_db_engine(db)
    with database_errors(engine):
        if _schema_revision(engine) != SCHEMA_HEAD:
            from alembic.util import CommandError

            from tecli import migrate

            try:
                migrate.upgrade(engine)
            except CommandError as error:
                where = engine.url.render_as_string(hide_password=True)
                raise UserError(f"cannot upgrade the database {where}: {error}; is it from a newer tecli?") from None
        mark_dead_runs(engine)
    return engine


def _schema_revision(engine: Engine) -> str | None:
    """The database's Alembic revision, read directly; None for a database without one."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


@contextmanager
def database_errors(engine: Engine):
    """Unreachable servers, files that are not databases: one line."""
    where = engine.url.render_as_string(hide_password=True)
    try:
        yield
    except DBAPIError as error:
        raise UserError(f"cannot use the database {where}: {error.orig}; check --db or TECLI_DB") from None
