"""Liveness: a run is judged by its process only where that process table is ours (same
host, boot and pid namespace); anywhere else by its heartbeat lease."""

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import pytest
from typer.testing import CliRunner
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from recorded import record_run
from tecli.db.liveness import Lease, current_owner, process_alive
from tecli.db.recording import mark_dead_runs
from tecli.db.schema import Run, utcnow
from tecli.cli import app
from tecli.db.store import open_database
from tecli.errors import UserError
from tecli.spec import RunSpec


def _set(engine, run_id, **values):
    with Session(engine) as session, session.begin():
        session.execute(update(Run).where(Run.id == run_id).values(**values))


def _status(engine) -> dict[int, str]:
    with Session(engine) as session:
        return dict(session.execute(select(Run.id, Run.status)).all())


def test_runs_are_judged_by_process_and_lease_here_and_by_lease_elsewhere(db_url):
    engine = open_database(db_url)
    run = lambda seed: record_run(engine, RunSpec(dataset="digits", seed=seed), status=None)  # noqa: E731
    alive, quiet, reused, gone, far_fresh, far_stale, twin_fresh, twin_stale = (run(s) for s in range(8))  # all `running`, owned by this process
    child = multiprocessing.get_context("spawn").Process(target=int)
    child.start()
    child.join()  # its pid now belongs to no process
    lease = 60.0
    old = utcnow() - timedelta(seconds=lease + 1)
    for run_id in (alive, quiet, reused, gone, far_fresh, far_stale, twin_fresh, twin_stale):
        _set(engine, run_id, lease_seconds=lease)
    _set(engine, quiet, heartbeat_at=old)  # alive here, but no longer beating for the run (a warm worker's leftover)
    _set(engine, reused, pid_started=current_owner().pid_started - 1)  # our pid, but a different process
    _set(engine, gone, pid=child.pid)
    for run_id in (far_fresh, far_stale):  # another machine
        _set(engine, run_id, host="elsewhere", boot_id="another-boot", pid=child.pid)
    for run_id in (twin_fresh, twin_stale):  # same hostname and boot, another pid namespace (a container)
        _set(engine, run_id, pid_namespace="pid:[1]", pid=child.pid)
    _set(engine, far_stale, heartbeat_at=old)
    _set(engine, twin_stale, heartbeat_at=old)
    assert sorted(mark_dead_runs(engine)) == sorted([quiet, reused, gone, far_stale, twin_stale])
    assert _status(engine) == {
        alive: "running", quiet: "interrupted", reused: "interrupted", gone: "interrupted",
        far_fresh: "running", far_stale: "interrupted", twin_fresh: "running", twin_stale: "interrupted",
    }  # fmt: skip


def test_a_run_older_than_liveness_records_is_judged_by_the_default_lease(tmp_path):
    """Rows from schema 0001 have no boot id, namespace or lease: the heartbeat and 300 s decide."""
    engine = open_database(tmp_path / "t.db")
    fresh = record_run(engine, RunSpec(dataset="digits", seed=1), status=None)
    stale = record_run(engine, RunSpec(dataset="digits", seed=2), status=None)
    for run_id in (fresh, stale):
        _set(engine, run_id, boot_id=None, pid_namespace=None, pid_started=None, lease_seconds=None, pid=999_999_999)
    _set(engine, stale, heartbeat_at=utcnow() - timedelta(seconds=301))
    assert mark_dead_runs(engine) == [stale]


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from recorded import record_run
    from tecli.db.liveness import current_owner
    from tecli.db.recording import Attempt, Heartbeat
    from tecli.db.store import open_database
    from tecli.spec import RunSpec

    engine = open_database({db!r})
    run_id = record_run(engine, RunSpec(dataset="digits", seed=42), status=None)
    owner = current_owner()
    print(run_id, owner.pid, owner.pid_namespace, flush=True)
    with Heartbeat(engine, Attempt(run_id, owner.token)):
        time.sleep(120)
    """
)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux unshare not found")
def test_a_live_run_in_another_pid_namespace_with_our_hostname_is_never_marked_dead(tmp_path):
    """A real process in its own pid namespace (as containers and cluster nodes have),
    sharing hostname and boot: its pid means nothing here, so only its lease counts."""
    db = str(tmp_path / "t.db")
    open_database(db)
    script = CHILD.format(tests=os.path.dirname(__file__), db=db)
    env = {**os.environ, "TECLI_HEARTBEAT_SECONDS": "0.3", "TECLI_LEASE_SECONDS": "2"}
    command = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script]
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        line = child.stdout.readline()
        if not line:
            error = child.stderr.read().strip()
            if error.startswith("unshare:"):  # the sandbox forbids namespaces; anything else is a failure
                pytest.skip(f"cannot create a pid namespace here: {error[:200]}")
            pytest.fail(error)
        run_id, pid, namespace = line.split()
        assert namespace != current_owner().pid_namespace
        engine = open_database(db)
        with Session(engine) as session:
            row = session.get(Run, int(run_id))
            assert (row.host, row.boot_id) == (current_owner().host, current_owner().boot_id)
            # the old rule (hostname + pid) would call it dead: that pid is not this process here
            assert not process_alive(row.pid, row.pid_started)
        deadline = time.monotonic() + 4  # twice its lease: only heartbeats keep it alive
        while time.monotonic() < deadline:
            assert mark_dead_runs(engine) == []
            time.sleep(0.2)
        assert _status(engine)[int(run_id)] == "running"
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # unshare and the namespace's process with it
        child.wait()
    time.sleep(2.5)  # its lease runs out
    assert mark_dead_runs(engine) == [int(run_id)]
    assert _status(engine)[int(run_id)] == "interrupted"


def test_lease_settings_come_from_the_environment(monkeypatch):
    assert Lease.from_env() == Lease(30.0, 300.0)
    monkeypatch.setenv("TECLI_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("TECLI_LEASE_SECONDS", "5")
    assert Lease.from_env() == Lease(1.0, 5.0)
    for lease, message in (("2", "must be at least 3 x"), ("inf", "must be a positive number"), ("soon", "got 'soon'")):
        monkeypatch.setenv("TECLI_LEASE_SECONDS", lease)
        with pytest.raises(UserError, match=message):
            Lease.from_env()


def test_a_bad_lease_setting_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("TECLI_LEASE_SECONDS", "nan")
    result = CliRunner().invoke(app, ["run", "--dataset", "digits", "--epochs", "1", "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 2
    assert result.output == "error: TECLI_LEASE_SECONDS must be a positive number of seconds, got 'nan'\n"
    assert list(tmp_path.iterdir()) == []


def test_a_forked_process_is_an_owner_of_its_own():
    """Sweep workers are forked from the sweep process: they must not share its token."""
    parent = current_owner()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_put_owner_token, args=(queue,))
    child.start()
    token = queue.get(timeout=60)
    child.join()
    assert token != parent.token and len(token) == len(parent.token)
    assert current_owner().token == parent.token  # drawn once per process


def _put_owner_token(queue) -> None:
    queue.put(current_owner().token)
