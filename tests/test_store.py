"""The results database on real SQLite files and a real PostgreSQL server: migrations,
past schemas upgraded with their data, recording, many writers, location rules."""

import multiprocessing
from dataclasses import replace
import os
import re
import shutil
import socket
import sys
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from recorded import TEST_CONDITIONS, epoch_result, record_run
from tecli.db import migrate
from tecli.db.recording import ClaimRefused, claim_run, finish_run, record_epoch
from tecli.db.schema import Base, Checkpoint, Claim, Epoch, Observation, Run, RunStatus
from tecli.db.store import SCHEMA_HEAD, create_db_engine, database_url, open_database
from tecli.epoch import LayerObservation
from tecli.errors import UserError
from tecli.spec import RunSpec, TEConfig

DATA = Path(__file__).parent / "data"
TABLES = {"alembic_version", "sweeps", "runs", "attempts", "epochs", "claims", "checkpoints", "observations"}


def test_schema_head_constant_is_the_newest_migration():
    assert SCHEMA_HEAD == migrate.head()


def test_upgrade_from_empty_to_head_matches_the_models(db_url):
    engine = create_db_engine(db_url)
    assert migrate.current(engine) is None
    migrate.upgrade(engine)
    assert migrate.current(engine) == migrate.head()
    assert set(inspect(engine).get_table_names()) == TABLES
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def _load_postgres_dump(url: str, dump: Path) -> None:
    # The dump empties search_path for its session: load it on a connection of its own.
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as connection:
        connection.execute(dump.read_text())


def _old_database(schema: str, backend: str, tmp_path, request) -> str:
    """A copy of tests/data/schema-<schema>.* on `backend`: its URL."""
    if backend == "sqlite":
        url = str(tmp_path / "old.db")
        shutil.copy(DATA / f"schema-{schema}.db", url)
        return url
    url = request.getfixturevalue("pg_url")
    _load_postgres_dump(url, DATA / f"schema-{schema}.postgresql.sql")
    return url


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_of_schema_0001_upgrades_with_its_data_intact(backend, tmp_path, request):
    """tests/data/schema-0001.* were written by tecli at schema 0001 (4 completed runs, one
    interrupted after 82 epochs); the PostgreSQL dump holds the same rows."""
    url = _old_database("0001", backend, tmp_path, request)
    engine = create_db_engine(url)
    assert migrate.current(engine) == "0001"
    with engine.connect() as connection:
        before_runs = connection.execute(text("SELECT * FROM runs ORDER BY id")).mappings().all()
        before_epochs = connection.execute(text("SELECT * FROM epochs ORDER BY id")).mappings().all()
        before_sweeps = connection.execute(text("SELECT * FROM sweeps ORDER BY id")).all()
    engine = open_database(url)  # upgrades
    assert migrate.current(engine) == SCHEMA_HEAD
    with engine.connect() as connection:
        after_runs = connection.execute(text("SELECT * FROM runs ORDER BY id")).mappings().all()
        after_epochs = connection.execute(text("SELECT * FROM epochs ORDER BY id")).mappings().all()
        assert [{k: new[k] for k in old.keys()} for old, new in zip(before_epochs, after_epochs)] == before_epochs
        assert connection.execute(text("SELECT * FROM sweeps ORDER BY id")).all() == before_sweeps
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
    assert len(before_epochs) == 90 and len(after_runs) == 5
    for old, new in zip(before_runs, after_runs):
        assert {k: new[k] for k in old.keys()} == dict(old)  # every old column unchanged
        assert new["code_version"] is None and new["owner"] is None  # not known for old runs
    with Session(engine) as session:
        claims = dict(session.execute(select(Claim.run_key, Claim.run_id)).all())
        newest = dict(session.execute(select(Run.run_key, func.max(Run.id)).group_by(Run.run_key)).all())
        assert claims == newest and len(claims) == 5
        old_baseline = RunSpec(**session.get(Run, 1).config)
    # the upgraded database takes new runs, and a sweep sees the old completed ones as done
    with pytest.raises(ClaimRefused, match="completed as run 1"):
        claim_run(engine, old_baseline, TEST_CONDITIONS)
    record_run(engine, RunSpec(dataset="digits", seed=77, epochs=1), [epoch_result(1)])


FIXTURE_TABLES = ("runs", "attempts", "epochs", "sweeps", "claims", "checkpoints")


def _upgrade_fixture(schema: str, backend: str, tmp_path, request):
    """Upgrade a copy of a tests/data/make_schema_fixture.py database (a sweep's 4 completed runs and a
    run interrupted after 3 epochs with its checkpoint) to head, checking that every old row and column
    stays as it was; returns the engine and the rows after, by table."""
    url = _old_database(schema, backend, tmp_path, request)
    engine = create_db_engine(url)
    assert migrate.current(engine) == schema
    with engine.connect() as connection:
        before = {t: connection.execute(text(f"SELECT * FROM {t} ORDER BY 1")).mappings().all() for t in FIXTURE_TABLES}
    engine = open_database(url)  # upgrades
    assert migrate.current(engine) == SCHEMA_HEAD
    with engine.connect() as connection:
        after = {t: connection.execute(text(f"SELECT * FROM {t} ORDER BY 1")).mappings().all() for t in FIXTURE_TABLES}
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
    assert [len(before[t]) for t in FIXTURE_TABLES] == [5, 5, 11, 1, 5, 1]
    for table in FIXTURE_TABLES:
        assert len(after[table]) == len(before[table])
        for old, new in zip(before[table], after[table]):
            assert {k: new[k] for k in old.keys()} == dict(old), table  # every old column unchanged
    return engine, after


def _takes_new_runs_and_knows_the_old(engine) -> None:
    with Session(engine) as session:
        interrupted = session.scalars(select(Run).where(Run.status == "interrupted")).one()
        assert session.get(Checkpoint, interrupted.id).epoch == 3 and len(interrupted.epochs) == 3
        completed = RunSpec.from_dict(session.scalars(select(Run).where(Run.status == "completed")).first().config)
    with pytest.raises(ClaimRefused, match="completed as run"):
        claim_run(engine, completed, TEST_CONDITIONS)
    record_run(engine, RunSpec(dataset="digits", seed=77, epochs=1), [epoch_result(1)])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_of_schema_0002_upgrades_with_its_data_intact(backend, tmp_path, request):
    """tests/data/schema-0002.* were written by tecli at schema 0002 (tests/data/make_schema_fixture.py).
    Every run before 0003 trained in the contiguous memory format, and says so after."""
    engine, after = _upgrade_fixture("0002", backend, tmp_path, request)
    assert {row["memory_format"] for t in ("runs", "attempts") for row in after[t]} == {"contiguous"}
    _takes_new_runs_and_knows_the_old(engine)


EPOCH_MEASURES_0004 = (
    "cpu_seconds", "source_fire_rate", "target_fire_rate", "te_positive_share", "factor_dev_mean", "factor_dev_max",
)  # fmt: skip


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_of_schema_0003_upgrades_with_its_data_intact(backend, tmp_path, request):
    """tests/data/schema-0003.* were written by tecli at schema 0003 (tests/data/make_schema_fixture.py).
    Epochs recorded before 0004 measured neither CPU time nor the feedback's diagnostics: NULL after,
    for baseline and TE runs alike; epochs recorded after the upgrade store them."""
    engine, after = _upgrade_fixture("0003", backend, tmp_path, request)
    assert {row["memory_format"] for t in ("runs", "attempts") for row in after[t]} == {"channels_last"}
    variants = {row["id"]: row["variant"] for row in after["runs"]}
    assert {variants[row["run_id"]] for row in after["epochs"]} == {"baseline", "te"}
    assert {row[name] for row in after["epochs"] for name in EPOCH_MEASURES_0004} == {None}
    _takes_new_runs_and_knows_the_old(engine)
    measured = dict(zip(EPOCH_MEASURES_0004, (0.9, 0.4, 0.3, 0.75, 0.01, 0.05)))
    run_id = record_run(engine, RunSpec(dataset="digits", seed=78, epochs=1, te=TEConfig()), [replace(epoch_result(1), **measured)])
    with Session(engine) as session:
        epoch = session.scalars(select(Epoch).where(Epoch.run_id == run_id)).one()
        assert {name: getattr(epoch, name) for name in EPOCH_MEASURES_0004} == measured


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_database_of_schema_0004_upgrades_with_its_data_intact(backend, tmp_path, request):
    """tests/data/schema-0004.* were written by tecli at schema 0004 (tests/data/make_schema_fixture.py).
    No run observed before 0005: runs and attempts have no probe size, epochs no observation time,
    and there are no observations; a run recorded after the upgrade stores its observations."""
    engine, after = _upgrade_fixture("0004", backend, tmp_path, request)
    assert {row["observe"] for t in ("runs", "attempts") for row in after[t]} == {None}
    assert {row["observe_seconds"] for row in after["epochs"]} == {None}
    assert {row["cpu_seconds"] is not None for row in after["epochs"]} == {True}  # measured since 0004
    _takes_new_runs_and_knows_the_old(engine)
    layers = (
        LayerObservation("conv1", 0, 256, 0.5, 8.9, 3.3),
        LayerObservation("fc1", 1, 120, 0.4, 8.8, 3.2, te_next=0.03, te_class=0.02),
        LayerObservation("fc2", 2, 84, 0.3, 8.7, 3.1, te_next=0.05, te_class=0.05),
        LayerObservation("class", 3, 10, 0.45, 3.2, 3.0),
    )
    observed = replace(epoch_result(1), observe_seconds=0.04, observed=layers)
    run_id = record_run(engine, RunSpec(dataset="digits", seed=79, epochs=1), [observed], conditions=replace(TEST_CONDITIONS, observe=512))
    with Session(engine) as session:
        assert session.get(Run, run_id).observe == 512 and session.get(Run, run_id).attempts[0].observe == 512
        assert session.scalars(select(Epoch.observe_seconds).where(Epoch.run_id == run_id)).one() == 0.04
        rows = session.scalars(select(Observation).where(Observation.run_id == run_id).order_by(Observation.position)).all()
        columns = [c for c in Observation.__table__.columns.keys() if c not in ("id", "run_id", "epoch")]
        assert [LayerObservation(**{c: getattr(row, c) for c in columns}) for row in rows] == list(layers)
        assert {row.epoch for row in rows} == {1}


def test_sqlite_settings(tmp_path):
    engine = open_database(tmp_path / "t.db")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_run_lifecycle_round_trip(db_url):
    engine = open_database(db_url)
    spec = RunSpec(dataset="usps", seed=4, epochs=3, te=TEConfig(lam=0.5))
    attempt = claim_run(engine, spec, TEST_CONDITIONS, data_copy="hdf5 usps.h5")
    for epoch in (1, 2):
        record_epoch(engine, attempt, epoch_result(epoch, test_acc=0.5 + epoch / 10))
    assert finish_run(engine, attempt, RunStatus.COMPLETED)
    with Session(engine) as session:
        run = session.get(Run, attempt.run_id)
        assert (run.status, run.dataset, run.variant, run.seed, run.data_copy) == ("completed", "usps", "te", 4, "hdf5 usps.h5")
        assert run.run_key == spec.run_key()
        assert run.config["te"]["lam"] == 0.5 and run.config["te"]["layers"] == [-1]
        assert run.finished_at >= run.started_at
        assert run.pid == os.getpid() and run.host == socket.gethostname() and run.owner == attempt.owner
        assert (run.device, run.threads, run.cpu_model, run.code_version, run.code_dirty) == (
            "cpu", 1, "test cpu", "src:test", False
        )
        assert run.boot_id and run.pid_namespace.startswith("pid:") and run.pid_started > 0
        assert run.torch_version and run.numba_version and run.python_version
        assert [(e.epoch, e.test_acc) for e in run.epochs] == [(1, 0.6), (2, 0.7)]
    assert not finish_run(engine, attempt, RunStatus.FAILED)  # a finished attempt has no more writes
    other = claim_run(engine, RunSpec(dataset="usps", seed=5), TEST_CONDITIONS)
    record_epoch(engine, other, epoch_result(1))
    with pytest.raises(IntegrityError):
        record_epoch(engine, other, epoch_result(1))  # unique per run and epoch


def _writer(path: str, worker: int, runs: int, epochs: int) -> None:
    engine = open_database(path)  # all eight race to create and upgrade the schema too
    for r in range(runs):
        spec = RunSpec(dataset="digits", seed=worker * 100 + r)
        record_run(engine, spec, [epoch_result(e) for e in range(1, epochs + 1)])


def test_eight_processes_write_at_once(db_url):
    path = db_url
    workers, runs, epochs = 8, 5, 20
    ctx = multiprocessing.get_context("spawn")
    processes = [ctx.Process(target=_writer, args=(path, w, runs, epochs)) for w in range(workers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * workers
    engine = open_database(path)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Run).where(Run.status == "completed")) == workers * runs
        assert session.scalar(select(func.count()).select_from(Epoch)) == workers * runs * epochs
        assert session.scalar(select(func.count(func.distinct(Run.seed)))) == workers * runs
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"


def test_db_location_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TECLI_DB", raising=False)
    assert str(database_url(None)) == f"sqlite:///{tmp_path / 'tecli.db'}"
    monkeypatch.setenv("TECLI_DB", str(tmp_path / "env.db"))
    assert str(database_url(None)) == f"sqlite:///{tmp_path / 'env.db'}"
    assert str(database_url(tmp_path / "arg.db")) == f"sqlite:///{tmp_path / 'arg.db'}"
    assert str(database_url("sqlite:///x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    url = database_url("postgresql+psycopg://me:secret@db.example:5433/results")
    assert (url.host, url.port, url.database, url.password) == ("db.example", 5433, "results", "secret")


@pytest.mark.parametrize(
    "make_db, message",
    [
        (lambda tmp: tmp / "missing" / "t.db", "does not exist"),
        (lambda tmp: tmp, "is a folder"),
        (lambda tmp: "nosuchdialect://host/db", "not a usable SQLAlchemy URL"),
    ],
)
def test_bad_db_is_a_user_error(tmp_path, make_db, message):
    with pytest.raises(UserError, match=message):
        database_url(make_db(tmp_path))


def test_a_read_only_folder_is_a_user_error_and_stays_empty(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    with pytest.raises(UserError, match="its folder is not writable"):
        open_database(locked / "t.db")
    assert list(locked.iterdir()) == []


def test_postgresql_without_its_driver_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    for url in ("postgresql+psycopg://u:secret@127.0.0.1/x", "postgresql://u:secret@127.0.0.1/x"):
        with pytest.raises(UserError) as error:
            database_url(url)
        assert str(error.value) == (
            "--db postgresql+psycopg://u:***@127.0.0.1/x needs the psycopg driver, which is not installed: "
            'python -m pip install "tecli[postgres]"'
        ).replace("postgresql+psycopg", url.split("://")[0])


@pytest.mark.parametrize(
    "url, message",
    [
        ("postgresql+psycopg2://u:secret@h/x", "needs the psycopg2 driver, which is not installed; install it, or use postgresql+psycopg://"),
        ("postgresql+asyncpg://u:secret@h/x", "names an asyncio driver"),
        ("postgres://u:secret@h:notaport/x", "is not a usable SQLAlchemy URL"),
        ("postgresql+nosuch://u:secret@h/x", "is not a usable SQLAlchemy URL"),
    ],
)
def test_other_drivers_and_bad_urls_are_one_line_without_the_password(url, message):
    with pytest.raises(UserError, match=re.escape(message)) as error:
        database_url(url)
    assert "secret" not in str(error.value) and "u:***@" in str(error.value)


def test_an_unreachable_server_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^cannot use the database postgresql\+psycopg://u:\*\*\*@127.0.0.1:1/x: .*refused; check --db"):
        open_database("postgresql+psycopg://u:pw@127.0.0.1:1/x")


def test_a_file_that_is_not_a_database_is_a_user_error(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(UserError, match="cannot use the database .*notes.db: file is not a database"):
        open_database(path)
