"""The test suite's own PostgreSQL server (tests/postgres_server.py) really works."""

import pytest
import sqlalchemy
from sqlalchemy import inspect, text

_seen_databases = set()


def test_server_answers_select_1(postgres):
    engine = sqlalchemy.create_engine(postgres.url("postgres"))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("run", [1, 2])
def test_each_pg_url_is_a_distinct_empty_database(pg_url, run):
    # Each run gets its own database: empty although the other run left a table in its own.
    engine = sqlalchemy.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            name = conn.execute(text("SELECT current_database()")).scalar_one()
            assert name not in _seen_databases
            _seen_databases.add(name)
            assert inspect(conn).get_table_names() == []
            conn.execute(text("CREATE TABLE left_behind (x integer)"))
    finally:
        engine.dispose()
