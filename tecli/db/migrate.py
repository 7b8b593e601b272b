"""Schema upgrades through Alembic: the migrations shipped inside the package, upgrade, current, history."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Key of the PostgreSQL advisory lock that serializes concurrent first opens ("tecli" in ASCII).
UPGRADE_LOCK = int.from_bytes(b"tecli", "big")


def _config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the schema to head; a no-op costing one query when it is there already.

    Concurrent first opens are safe: on SQLite the upgrade's transaction starts with
    BEGIN IMMEDIATE (see store), on PostgreSQL it takes an advisory lock, so the
    second process waits and then finds the schema at head.

    SQLite changes a column by rebuilding its table, and dropping the old table would
    cascade to the rows that reference it; so foreign keys are off during upgrades
    (as Alembic's batch mode advises) and checked before the upgrade commits.
    """
    if current(engine) == head():
        return
    from alembic import command  # heavy; only needed when there is something to do

    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:  # a PRAGMA that only works outside a transaction: on the driver's connection
            connection.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")
        try:
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({UPGRADE_LOCK})")
                broken_before = _broken_references(connection)
                command.upgrade(_config(connection), "head")
                broken = _broken_references(connection) - broken_before
                if broken:
                    raise UpgradeBrokeReferences(f"the schema upgrade would break references in {', '.join(sorted(broken))}")
        finally:
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys = ON")


class UpgradeBrokeReferences(Exception):
    """Rows would lose what they refer to; the upgrade was rolled back."""


def _broken_references(connection) -> set[str]:
    """SQLite only: (table, row) pairs whose foreign keys point nowhere, as "table row N" strings."""
    if connection.dialect.name != "sqlite":
        return set()
    return {f"{table} row {rowid}" for table, rowid, *_ in connection.exec_driver_sql("PRAGMA foreign_key_check")}


def history() -> list[tuple[str, str | None, str]]:
    """(revision, down revision, message) from oldest to newest."""
    scripts = ScriptDirectory.from_config(_config())
    return [(s.revision, s.down_revision, s.doc) for s in reversed(list(scripts.walk_revisions()))]
