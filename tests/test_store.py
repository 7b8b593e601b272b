"""The results database on real SQLite files: migrations, recording, dead runs, many writers."""

import multiprocessing
import os
import socket
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tecli import migrate
from tecli.epoch import EpochResult
from tecli.errors import UserError
from tecli.recording import STALE_AFTER, finish_run, insert_run, mark_dead_runs, record_epoch
from tecli.spec import RunSpec, TEConfig
from tecli.store import SCHEMA_HEAD, Base, Epoch, Run, create_db_engine, database_url, open_database, utcnow


def epoch_result(epoch: int, test_acc: float = 0.75) -> EpochResult:
    return EpochResult(epoch, 0.5, 0.8, 0.6, test_acc, seconds=1.0, te_seconds=0.02, te_mean=0.01, te_max=0.3)


def test_schema_head_constant_is_the_newest_migration():
    assert SCHEMA_HEAD == migrate.head()


def test_upgrade_from_empty_to_head_matches_the_models(tmp_path):
    engine = create_db_engine(tmp_path / "fresh.db")
    assert migrate.current(engine) is None
    migrate.upgrade(engine)
    assert migrate.current(engine) == migrate.head()
    assert set(inspect(engine).get_table_names()) == {"alembic_version", "sweeps", "runs", "epochs"}
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_sqlite_settings(tmp_path):
    engine = open_database(tmp_path / "t.db")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_run_lifecycle_round_trip(tmp_path):
    engine = open_database(tmp_path / "t.db")
    spec = RunSpec(dataset="usps", seed=4, epochs=3, te=TEConfig(lam=0.5))
    run_id = insert_run(engine, spec, "hdf5 usps.h5", "cpu", 2)
    for epoch in (1, 2):
        record_epoch(engine, run_id, epoch_result(epoch, test_acc=0.5 + epoch / 10))
    finish_run(engine, run_id, "completed")
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert (run.status, run.dataset, run.variant, run.seed, run.data_copy) == ("completed", "usps", "te", 4, "hdf5 usps.h5")
        assert run.run_key == spec.run_key()
        assert run.config["te"]["lam"] == 0.5 and run.config["te"]["layers"] == [-1]
        assert run.finished_at >= run.started_at
        assert run.pid == os.getpid() and run.host == socket.gethostname()
        assert run.torch_version and run.numba_version and run.python_version
        assert [(e.epoch, e.test_acc) for e in run.epochs] == [(1, 0.6), (2, 0.7)]
    with pytest.raises(IntegrityError):
        record_epoch(engine, run_id, epoch_result(2))  # unique per run and epoch


def test_dead_and_stale_runs_become_interrupted(tmp_path):
    engine = open_database(tmp_path / "t.db")
    spec = RunSpec(dataset="digits")
    alive = insert_run(engine, spec, "x", "cpu", None)
    quiet = insert_run(engine, spec, "x", "cpu", None)  # alive, but its heartbeat is old
    reused = insert_run(engine, spec, "x", "cpu", None)  # its pid now belongs to a later process
    gone = insert_run(engine, spec, "x", "cpu", None)
    far_fresh = insert_run(engine, spec, "x", "cpu", None)
    far_stale = insert_run(engine, spec, "x", "cpu", None)
    record_epoch(engine, gone, epoch_result(1))
    child = multiprocessing.get_context("spawn").Process(target=int)
    child.start()
    child.join()  # its pid now belongs to no process
    with Session(engine) as session, session.begin():
        session.execute(update(Run).where(Run.id == gone).values(pid=child.pid))
        session.execute(update(Run).where(Run.id.in_([far_fresh, far_stale])).values(host="elsewhere"))
        old = utcnow() - STALE_AFTER - timedelta(seconds=1)
        session.execute(update(Run).where(Run.id.in_([far_stale, quiet])).values(heartbeat_at=old))
        long_ago = utcnow() - timedelta(days=400)  # before this test process started
        session.execute(update(Run).where(Run.id == reused).values(started_at=long_ago))
    assert sorted(mark_dead_runs(engine)) == sorted([gone, far_stale, reused])
    with Session(engine) as session:
        status = dict(session.execute(select(Run.id, Run.status)).all())
        assert status == {
            alive: "running", quiet: "running", reused: "interrupted", gone: "interrupted",
            far_fresh: "running", far_stale: "interrupted",
        }  # fmt: skip
        assert session.scalar(select(func.count()).select_from(Epoch).where(Epoch.run_id == gone)) == 1


def _writer(path: str, worker: int, runs: int, epochs: int) -> None:
    engine = open_database(path)  # all eight race to create and upgrade the schema too
    for r in range(runs):
        run_id = insert_run(engine, RunSpec(dataset="digits", seed=worker * 100 + r), "x", "cpu", 1)
        for e in range(1, epochs + 1):
            record_epoch(engine, run_id, epoch_result(e))
        finish_run(engine, run_id, "completed")


def test_eight_processes_write_at_once(tmp_path):
    path = str(tmp_path / "shared.db")
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
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"


def test_db_location_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TECLI_DB", raising=False)
    assert database_url(None) == f"sqlite:///{tmp_path / 'tecli.db'}"
    monkeypatch.setenv("TECLI_DB", str(tmp_path / "env.db"))
    assert database_url(None) == f"sqlite:///{tmp_path / 'env.db'}"
    assert database_url(tmp_path / "arg.db") == f"sqlite:///{tmp_path / 'arg.db'}"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.parametrize(
    "make_db, message",
    [
        (lambda tmp: tmp / "missing" / "t.db", "does not exist"),
        (lambda tmp: tmp / "locked" / "t.db", "is not writable"),
        (lambda tmp: tmp, "is a folder"),
        (lambda tmp: "nosuchdialect://host/db", "not a usable SQLAlchemy URL"),
        (lambda tmp: "postgresql://user@host:notaport/db", "not a usable SQLAlchemy URL"),
    ],
)
def test_bad_db_is_a_user_error(tmp_path, make_db, message):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    with pytest.raises(UserError, match=message):
        database_url(make_db(tmp_path))


def test_a_file_that_is_not_a_database_is_a_user_error(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(UserError, match="cannot use the database .*notes.db: file is not a database"):
        open_database(path)
