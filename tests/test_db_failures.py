"""The database becoming unwritable in the middle of `tecli run` (disk full, server gone).

Promised: one line naming the database and the problem, exit code 1, every
committed epoch intact; the run is marked `failed` when the database can still be
written, else it stays `running` until the next command that opens the database
finds the process gone and marks it `interrupted`.

Real processes against real failures where the machine allows it: a tiny tmpfs
filled up under a SQLite database (needs root, else skipped), a PostgreSQL server
of the test's own stopped with `pg_ctl stop -m immediate`, and a server that
refuses epoch inserts with PostgreSQL's disk_full error. The in-process variants
with injected driver errors run everywhere.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

import tecli.db.recording
from tecli.cli import app
from tecli.db.schema import Epoch, Run
from tecli.db.store import create_db_engine, describe

from postgres_server import PostgresServer, find_binaries

EPOCHS = 400  # far more than a test lets finish; digits epochs take 0.05 to 1 s
EPOCHS_BEFORE_FAILURE = 3
START_TIMEOUT_S = 90  # interpreter, torch import, data and the first epochs on a loaded machine
EXIT_TIMEOUT_S = 30  # from the failure to the process's exit


def invoke(*args):
    return CliRunner().invoke(app, list(args))


# -- helpers for real `tecli run` processes -------------------------------------


class RunProcess:
    """`python -m tecli run --dataset digits --epochs 400 --db DB`, stdout and stderr to files
    (never to pipes, which could fill and block it, and never into the folder under test)."""

    def __init__(self, db: str, logs: Path):
        self.db = db
        self.stdout_path = logs / "run.stdout"
        self.stderr_path = logs / "run.stderr"
        command = [sys.executable, "-m", "tecli", "run", "--dataset", "digits", "--epochs", str(EPOCHS), "--db", db]
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def printed_epochs(self) -> list[int]:
        """Epoch numbers of the `epoch   N/400 ...` lines it printed (each after its commit)."""
        return [
            int(line.split()[1].split("/")[0])
            for line in self.stdout_path.read_text().splitlines()
            if line.startswith("epoch ")
        ]

    def wait_for_epochs(self, count: int, timeout: float = START_TIMEOUT_S) -> int:
        """Poll the database until it holds `count` epochs; returns how many it held."""
        engine = create_db_engine(self.db)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                assert self.process.poll() is None, f"the run ended early: {self.stderr}"
                try:
                    with Session(engine) as session:
                        done = session.scalar(select(func.count()).select_from(Epoch))
                    if done >= count:
                        return done
                except Exception:  # the schema may not exist yet
                    pass
                time.sleep(0.05)
        finally:
            engine.dispose()  # no connection of ours left open in the database under test
        raise AssertionError(f"the run did not record {count} epochs in {timeout} s; stderr: {self.stderr}")

    def wait_for_exit(self, timeout: float = EXIT_TIMEOUT_S) -> tuple[int, float]:
        began = time.monotonic()
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the run still trains {timeout} s after the database failed; stdout tail: "
                f"{self.stdout_path.read_text()[-500:]!r}, stderr: {self.stderr!r}"
            ) from None
        return code, time.monotonic() - began

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def assert_one_line_error(stderr: str, *needles: str) -> str:
    """The process said exactly one line, an `error:` naming the database and the problem."""
    assert stderr.strip(), "nothing on stderr"
    lines = stderr.strip().splitlines()
    assert lines == [lines[0]], f"more than one line on stderr:\n{stderr}"
    line = lines[0]
    assert "Traceback" not in line
    assert line.startswith("error: run 1 failed: cannot write the database "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def assert_epochs_intact(epochs: list[int], at_least: int) -> None:
    assert len(epochs) >= at_least, epochs
    assert epochs == list(range(1, len(epochs) + 1)), f"gaps or duplicates: {epochs}"


def listed_runs(db: str) -> list[dict]:
    """`tecli runs --db DB --format json`: opening the database marks dead runs interrupted."""
    result = invoke("runs", "--db", db, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def require_postgres_binaries() -> None:
    if find_binaries() is None:
        message = "PostgreSQL binaries (initdb, pg_ctl) not found; apt-get install postgresql"
        if os.environ.get("TECLI_REQUIRE_POSTGRES") == "1":
            pytest.fail(message + " (TECLI_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(message)


# -- 1. disk full under SQLite: a real tmpfs, filled up --------------------------


def _mount_tiny_tmpfs(folder: Path, size: str = "16m") -> None:
    # Room for the WAL to reach SQLite's auto-checkpoint (1000 pages, ~4 MB) with checkpoints in it.
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_injected_* cover the disk-full path")
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); test_injected_* cover the disk-full path")


def _unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # still busy: detach it anyway


def _fill(path: Path) -> int:
    """Write `path` until the file system says ENOSPC; returns the bytes written."""
    chunk = b"\0" * (64 * 1024)
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            try:
                written += os.write(fd, chunk)  # a short write takes the last free bytes
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                return written
    finally:
        os.close(fd)


def test_disk_full_ends_a_sqlite_run_with_one_line_and_keeps_every_epoch(tmp_path):
    tiny = tmp_path / "tiny"
    _mount_tiny_tmpfs(tiny)
    db = str(tiny / "full.db")
    run = None
    try:
        run = RunProcess(db, tmp_path)
        run.wait_for_epochs(EPOCHS_BEFORE_FAILURE)
        filler = tiny / "filler"
        assert _fill(filler) > 0
        code, seconds = run.wait_for_exit()
        stderr = run.stderr

        assert code == 1, stderr
        assert seconds < EXIT_TIMEOUT_S
        assert_one_line_error(stderr, db, "database or disk is full")

        filler.unlink()  # room again: the next command can recover the WAL and write
        with sqlite3.connect(db) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            epochs = [row[0] for row in connection.execute("SELECT epoch FROM epochs WHERE run_id = 1 ORDER BY epoch")]
            status, error = connection.execute("SELECT status, error FROM runs WHERE id = 1").fetchone()
            assert connection.execute("SELECT count(*) FROM epochs WHERE test_acc > 0").fetchone()[0] == len(epochs)
        connection.close()
        assert_epochs_intact(epochs, EPOCHS_BEFORE_FAILURE)
        # Every epoch it announced was committed first; the one that failed was never announced.
        assert run.printed_epochs() == epochs

        # A full disk refuses the final status too, so the run is left `running` for the
        # next command; should the last write ever fit, it is `failed` with the reason.
        assert status in ("running", "failed"), status
        if status == "failed":
            assert "database or disk is full" in error
        [listed] = listed_runs(db)
        assert listed["status"] == ("interrupted" if status == "running" else "failed")
        assert listed["epochs_done"] == len(epochs)
        with sqlite3.connect(db) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        connection.close()
    finally:
        if run is not None:
            run.kill()
        _unmount(tiny)


# -- 2. the PostgreSQL server gone: a server of the test's own, killed ----------


def test_server_gone_ends_a_postgresql_run_with_one_line_and_keeps_every_epoch(tmp_path):
    require_postgres_binaries()
    server = PostgresServer().start()  # never the session's shared server: this one gets killed
    run = None
    try:
        # The server asks for the URL's password, which must not reach the message.
        url = make_url(server.create_database("gone"))
        db = url.render_as_string(hide_password=False)
        run = RunProcess(db, tmp_path)
        run.wait_for_epochs(EPOCHS_BEFORE_FAILURE)
        server.stop_immediately()
        code, seconds = run.wait_for_exit()
        stderr = run.stderr

        assert code == 1, stderr
        assert seconds < EXIT_TIMEOUT_S
        named = describe(url)
        assert "***" in named
        line = assert_one_line_error(stderr, named + ": ")
        assert url.password not in stderr and "***" in stderr
        problem = line.split(named + ": ", 1)[1]
        assert problem.strip() and problem != "(see `tecli runs show 1`)", line

        server.restart()
        engine = create_db_engine(db)
        try:
            with Session(engine) as session:
                run_row = session.get(Run, 1)
                assert run_row.status == "running"  # the final write could not reach the server
                epochs = [e.epoch for e in run_row.epochs]
            assert_epochs_intact(epochs, EPOCHS_BEFORE_FAILURE)
            # Every announced epoch is recorded. A commit the server made just before it died,
            # its answer lost, is recorded but never announced (at most that one).
            printed = run.printed_epochs()
            assert printed in (epochs, epochs[:-1]), (printed, epochs)
            [listed] = listed_runs(db)  # same host and pid namespace: judged by its pid, at once
            assert listed["status"] == "interrupted" and listed["epochs_done"] == len(epochs)
            with Session(engine) as session:
                assert session.get(Run, 1).error == tecli.db.recording.DEAD_MESSAGE
                assert session.scalar(select(func.count()).select_from(Epoch)) == len(epochs)
        finally:
            engine.dispose()
    finally:
        if run is not None:
            run.kill()
        server.stop()


# -- 3. the database refuses epochs but still takes other writes: `failed` -------

_REFUSE_EPOCHS_SQL = {
    "postgresql": [
        """CREATE FUNCTION refuse_epochs() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             RAISE EXCEPTION 'could not extend file "base/1/2": No space left on device' USING ERRCODE = 'disk_full';
           END $$""",
        "CREATE TRIGGER refuse_epochs BEFORE INSERT ON epochs FOR EACH ROW EXECUTE FUNCTION refuse_epochs()",
    ],
    "sqlite": [
        "CREATE TRIGGER refuse_epochs BEFORE INSERT ON epochs"
        " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
    ],
}


def test_database_refusing_epochs_marks_the_run_failed(tmp_path, db_url):
    """A real process; the epoch insert fails with a disk-full error while the runs table
    still takes writes (PostgreSQL: SQLSTATE 53100 disk_full from a trigger)."""
    run = RunProcess(db_url, tmp_path)
    try:
        run.wait_for_epochs(EPOCHS_BEFORE_FAILURE)
        engine = create_db_engine(db_url)
        try:
            backend = engine.url.get_backend_name()
            with engine.begin() as connection:
                for statement in _REFUSE_EPOCHS_SQL[backend]:
                    connection.execute(text(statement))
        finally:
            engine.dispose()
        code, _ = run.wait_for_exit()
        stderr = run.stderr
        assert code == 1, stderr
        problem = "No space left on device" if backend == "postgresql" else "database or disk is full"
        assert_one_line_error(stderr, describe(engine.url), problem)

        engine = create_db_engine(db_url)
        try:
            with Session(engine) as session:
                run_row = session.get(Run, 1)
                assert run_row.status == "failed"
                assert run_row.error.startswith("cannot write the database ") and problem in run_row.error
                assert "Traceback" not in run_row.error
                assert run_row.finished_at is not None
                epochs = [e.epoch for e in run_row.epochs]
        finally:
            engine.dispose()
        assert_epochs_intact(epochs, EPOCHS_BEFORE_FAILURE)
        assert run.printed_epochs() == epochs
        [listed] = listed_runs(db_url)
        assert listed["status"] == "failed" and listed["epochs_done"] == len(epochs)
    finally:
        run.kill()


# -- 4. injected driver errors, in process (fast, no root, no server) -------------


def _disk_full(backend_message: str = "database or disk is full") -> OperationalError:
    return OperationalError("INSERT INTO epochs ...", {}, sqlite3.OperationalError(backend_message))


@pytest.mark.parametrize("fail_at", [1, 4])
def test_injected_write_failure_marks_the_run_failed(tmp_path, monkeypatch, fail_at):
    real_record_epoch = tecli.db.recording.record_epoch
    calls = []

    def record_epoch_until_the_disk_fills(engine, attempt, result, checkpoint=None):
        calls.append(result.epoch)
        if len(calls) == fail_at:
            raise _disk_full()
        real_record_epoch(engine, attempt, result, checkpoint)

    monkeypatch.setattr(tecli.db.recording, "record_epoch", record_epoch_until_the_disk_fills)
    db = str(tmp_path / "i.db")
    result = invoke("run", "--dataset", "digits", "--epochs", "10", "--db", db)
    assert result.exit_code == 1, result.output
    assert_one_line_error(result.stderr, db, "database or disk is full")
    assert f"epoch {fail_at:>3}/10" not in result.stdout  # never announced: it was not recorded
    assert calls == list(range(1, fail_at + 1))  # training stopped at the failure

    engine = create_db_engine(db)
    try:
        with Session(engine) as session:
            run = session.get(Run, 1)
            assert run.status == "failed"
            assert run.error == f"cannot write the database {db}: database or disk is full"
            assert [e.epoch for e in run.epochs] == list(range(1, fail_at))
    finally:
        engine.dispose()


def test_injected_failure_of_every_write_leaves_the_run_running_for_liveness(tmp_path, monkeypatch):
    """The final status cannot be written either: still one line and exit 1, epochs kept,
    the row left `running` (its owner, this very test process, is alive, so no command
    marks it; the real-process tests above see it marked interrupted)."""
    real_record_epoch = tecli.db.recording.record_epoch
    calls = []

    def record_epoch_until_the_server_goes(engine, attempt, result, checkpoint=None):
        calls.append(result.epoch)
        if len(calls) == 3:
            raise _disk_full("connection to server at \"127.0.0.1\", port 1 failed: Connection refused")
        real_record_epoch(engine, attempt, result, checkpoint)

    def finish_run_refused(*args, **kwargs):
        raise _disk_full("connection to server at \"127.0.0.1\", port 1 failed: Connection refused")

    monkeypatch.setattr(tecli.db.recording, "record_epoch", record_epoch_until_the_server_goes)
    monkeypatch.setattr(tecli.db.recording, "finish_run", finish_run_refused)
    db = str(tmp_path / "i.db")
    result = invoke("run", "--dataset", "digits", "--epochs", "10", "--db", db)
    assert result.exit_code == 1, result.output
    assert_one_line_error(result.stderr, db, "Connection refused")

    engine = create_db_engine(db)
    try:
        with Session(engine) as session:
            run = session.get(Run, 1)
            assert run.status == "running" and run.error is None and run.finished_at is None
            assert [e.epoch for e in run.epochs] == [1, 2]
    finally:
        engine.dispose()


def test_injected_failure_of_the_final_write_is_not_a_success(tmp_path, monkeypatch):
    """Every epoch trained and recorded, but `completed` cannot be written: not exit 0 with a
    summary (the run would later read `interrupted`), but one line, exit 1, marked failed."""
    real_finish_run = tecli.db.recording.finish_run
    statuses = []

    def finish_run_refusing_completed(engine, attempt, status, error=None):
        statuses.append(status)
        if status == "completed":
            raise _disk_full()
        return real_finish_run(engine, attempt, status, error)

    monkeypatch.setattr(tecli.db.recording, "finish_run", finish_run_refusing_completed)
    db = str(tmp_path / "i.db")
    result = invoke("run", "--dataset", "digits", "--epochs", "3", "--db", db)
    assert result.exit_code == 1, result.output
    assert_one_line_error(result.stderr, db, "database or disk is full")
    assert statuses == ["completed", "failed"]

    engine = create_db_engine(db)
    try:
        with Session(engine) as session:
            run = session.get(Run, 1)
            assert run.status == "failed"
            assert run.error == f"cannot write the database {db}: database or disk is full"
            assert [e.epoch for e in run.epochs] == [1, 2, 3]
    finally:
        engine.dispose()
