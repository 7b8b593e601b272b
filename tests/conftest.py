"""Every test gets its own default database, so no test writes ./tecli.db."""

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from postgres_server import PostgresServer, find_binaries
from sweeps import free_port

POSTGRES_MISSING = "PostgreSQL binaries (initdb, pg_ctl) not found; apt-get install postgresql"
RAY_MISSING = "Ray is not installed; pip install ray"

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


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real local Ray cluster (head node, 2 CPUs, GPUs as Ray detects them) for the whole
    session; yields its address, HOST:PORT. Skipped where Ray is not installed (a failure
    instead when TECLI_REQUIRE_RAY=1).

    `ray start --block` in its own process group: stopping it (SIGTERM) stops the Ray
    processes it started, and only those (`ray stop` would end every Ray cluster of the user)."""
    try:
        import ray
    except ImportError as error:
        if os.environ.get("TECLI_REQUIRE_RAY") == "1":
            pytest.fail(f"{RAY_MISSING} ({error}; TECLI_REQUIRE_RAY=1)", pytrace=False)
        pytest.skip(f"{RAY_MISSING} ({error})")
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "ray-start.log"
    command = [
        str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
        "--port", str(port), "--num-cpus", "2",
        "--include-dashboard=false", "--disable-usage-stats",
    ]  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # Started with SIGINT ignored, as a batch script or a background job starts it: Ray's
    # processes inherit that, and a task's stop (which arrives as SIGINT) must work anyway.
    with log.open("w") as out:
        head = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`ray start` did not start a cluster:\n{log.read_text()[-3000:]}", pytrace=False)
            time.sleep(0.2)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if head.poll() is None:
            head.send_signal(signal.SIGTERM)
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                head.kill()
                head.wait()
        try:
            os.killpg(head.pid, signal.SIGKILL)  # anything of the cluster's still in its process group
        except ProcessLookupError:
            pass
