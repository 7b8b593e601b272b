"""Where the results database is and how to open it: URL rules, engine set-up, schema upgrade.

The location is `--db`, else TECLI_DB, else `tecli.db` in the working folder; a
plain path means an SQLite file, anything with `://` is an SQLAlchemy URL (for
example postgresql+psycopg://user@host/db; plain postgresql:// means psycopg too). A database is created, or upgraded to
the newest schema, the first time a writing command opens it; reading commands
(`runs`, `report`) open only a database that exists.

SQLite is set up for several writer processes: WAL journal, a 30 s busy timeout,
foreign keys on, and every transaction starts with BEGIN IMMEDIATE so two
writers queue on the lock instead of failing on a read-to-write upgrade.
PostgreSQL needs nothing special: its row locks and unique keys do the work.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from tecli.errors import UserError, first_line, shown
from tecli.paths import writable_folder

DEFAULT_DB = "tecli.db"
# The newest migration in tecli/db/migrations/versions (a test keeps the two equal).
# Knowing it here lets an up-to-date database open without importing Alembic.
SCHEMA_HEAD = "0005"
BUSY_TIMEOUT_MS = 30_000
POSTGRES_INSTALL = 'python -m pip install "tecli[postgres]"'


def redacted(value: str) -> str:
    """A database URL as a user's value for messages: its password replaced by ***."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", value)


def database_url(db: str | os.PathLike | URL | None = None, must_exist: bool = False) -> URL:
    """The SQLAlchemy URL for --db / TECLI_DB / ./tecli.db, checked without connecting or creating anything.

    must_exist (reading commands): an SQLite file that is not there is "no database at PATH"."""
    if isinstance(db, URL):
        return db
    value = str(db) if db else os.environ.get("TECLI_DB") or DEFAULT_DB
    url = _server_url(value) if "://" in value else make_url("sqlite://").set(database=value)
    if url.get_backend_name() != "sqlite":
        return url
    if not url.database or url.database == ":memory:":
        raise UserError(f"--db {shown(value)} is an in-memory database, which keeps nothing; pass a file path")
    try:
        path = Path(url.database).expanduser().absolute()
        if must_exist and not path.exists():
            raise UserError(f"no database at {shown(path)}; check --db or TECLI_DB (tecli run or tecli sweep creates it)")
        if path.is_dir():
            raise UserError(f"--db {shown(value)} is a folder; pass a database file path such as {shown(path / DEFAULT_DB)}")
        if not path.parent.is_dir():
            raise UserError(f"cannot create the database {shown(path)}: folder does not exist; create it or pass another --db")
    except OSError as error:  # a name too long for the filesystem, a path through a file
        raise UserError(f"--db {shown(value)} is not a usable file path ({error.strerror}); pass another --db") from None
    return url.set(database=str(path))


def _server_url(value: str) -> URL:
    where = shown(redacted(value))
    try:
        url = make_url(value)
    except (ArgumentError, ValueError) as error:
        raise UserError(f"--db {where} is not a usable SQLAlchemy URL ({redacted(str(error))}); pass a file path or a URL such as sqlite:///tecli.db") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")  # tecli's PostgreSQL driver unless another is named
    try:
        dialect = url.get_dialect()
    except (NoSuchModuleError, ImportError) as error:
        raise UserError(f"--db {where} is not a usable SQLAlchemy URL ({error}); use a file path, sqlite:/// or postgresql+psycopg://") from None
    if getattr(dialect, "is_async", False):
        raise UserError(f"--db {where} names an asyncio driver; tecli needs a synchronous one such as postgresql+psycopg://")
    try:
        dialect.import_dbapi()
    except ImportError as error:
        driver = error.name or url.drivername
        if url.drivername == "postgresql+psycopg":
            hint = f": {POSTGRES_INSTALL}"
        elif url.get_backend_name() == "postgresql":
            hint = f"; install it, or use postgresql+psycopg:// after {POSTGRES_INSTALL}"
        else:
            hint = ""
        raise UserError(f"--db {where} needs the {driver} driver, which is not installed{hint}") from None
    return url


def describe(url: URL) -> str:
    """The database as a user would name it: the file path, or the URL without its password."""
    return url.database if url.get_backend_name() == "sqlite" else url.render_as_string(hide_password=True)


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


_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()  # every engine alive, for close_all()


def create_db_engine(db: str | os.PathLike | URL | None = None) -> Engine:
    """An engine for the database, with SQLite's concurrency settings; no schema work."""
    url = db if isinstance(db, URL) else database_url(db)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url)
        _sqlite_setup(engine)
    else:  # pool_pre_ping: a worker's connection may outlive a server restart between epochs.
        engine = create_engine(url, pool_pre_ping=True)
    _ENGINES.add(engine)
    return engine


def close_all() -> None:
    """Close every engine's connections (SQLite then folds its WAL file back into the
    database), for a process that exits without the interpreter's teardown."""
    for engine in list(_ENGINES):
        engine.dispose()


def open_database(db: str | os.PathLike | URL | None = None, create: bool = True) -> Engine:
    """Engine for the database, upgraded to the newest schema, with dead runs marked interrupted.

    create=False (reading commands) refuses a database that does not exist yet, rather
    than creating an empty one: an SQLite file that is not there, or a server database
    without tecli's tables.
    """
    from tecli.db.recording import mark_dead_runs

    url = database_url(db, must_exist=not create)
    sqlite = url.get_backend_name() == "sqlite"  # database_url has checked its path
    if sqlite and not writable_folder(Path(url.database).parent):
        raise UserError(f"cannot write the database {url.database}: its folder is not writable; pass another --db or set TECLI_DB")
    engine = create_db_engine(url)
    with database_errors(engine):
        revision = _schema_revision(engine)
        if revision is None and not create:
            raise UserError(f"no tecli database at {describe(url)} (it has no tecli tables); check --db or TECLI_DB")
        if revision != SCHEMA_HEAD:
            from alembic.util import CommandError

            from tecli.db import migrate

            try:
                migrate.upgrade(engine)
            except migrate.UpgradeBrokeReferences as error:
                raise UserError(f"cannot upgrade the database {describe(url)}: {error}; nothing was changed") from None
            except CommandError as error:
                raise UserError(f"cannot upgrade the database {describe(url)}: {error}; is it from a newer tecli?") from None
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
    """Unreachable servers, files that are not databases, full disks: one line."""
    try:
        yield
    except DBAPIError as error:
        raise UserError(f"cannot use the database {describe(engine.url)}: {first_line(error.orig)}; check --db or TECLI_DB") from None
