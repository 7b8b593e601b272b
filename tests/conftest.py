"""Every test gets its own default database, so no test writes ./tecli.db."""

import itertools
import os

import pytest

from postgres_server import PostgresServer, find_binaries

POSTGRES_MISSING = "PostgreSQL binaries (initdb, pg_ctl) not found; apt-get install postgresql"

_database_numbers = itertools.count(1)


@pytest.fixture(autouse=True)
def _private_default_db(tmp_path, monkeypatch):
    monkeypatch.setenv("TECLI_DB", str(tmp_path / "default-tecli.db"))


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the whole session (skipped where PostgreSQL is not installed;
    a failure instead when TECLI_REQUIRE_POSTGRES=1, as in CI)."""
    if find_binaries() is None:
        if os.environ.get("TECLI_REQUIRE_POSTGRES") == "1":
            pytest.fail(POSTGRES_MISSING + " (TECLI_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(POSTGRES_MISSING)
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres) -> str:
    """URL of a brand-new, empty database on the session's PostgreSQL server."""
    return postgres.create_database(f"t_{next(_database_numbers)}")


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh database for each back end: a SQLite file path, or a new PostgreSQL database URL."""
    if request.param == "sqlite":
        return str(tmp_path / "test.db")
    server = request.getfixturevalue("postgres")
    return server.create_database(f"t_{next(_database_numbers)}")
