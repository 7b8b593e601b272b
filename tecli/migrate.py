"""Schema upgrades through Alembic: the migrations folder, upgrade to head, current, history."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

# The project's top-level migrations/ folder (tecli is installed from its checkout).
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


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
    """
    if current(engine) == head():
        return
    from alembic import command  # heavy; only needed when there is something to do

    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7465636c69)")
        command.upgrade(_config(connection), "head")


def history() -> list[tuple[str, str | None, str]]:
    """(revision, down revision, message) from oldest to newest."""
    scripts = ScriptDirectory.from_config(_config())
    return [(s.revision, s.down_revision, s.doc) for s in reversed(list(scripts.walk_revisions()))]
