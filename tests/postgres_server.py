"""A throwaway PostgreSQL server for tests and benchmarks.

No pytest in here, so a benchmark script can use it too::

    from tests.postgres_server import PostgresServer

    with PostgresServer() as server:
        url = server.create_database("bench")

The server runs from Debian's binaries (newest ``/usr/lib/postgresql/*/bin``,
else ``initdb``/``pg_ctl`` on PATH), in a fresh temporary folder, listening only
on 127.0.0.1 at a free port. The ``postgres`` user logs in over TCP with a
password (scram-sha-256, as real servers ask), so every URL carries one and the
tests see that tecli neither loses nor prints it. PostgreSQL refuses to run as root, so under root the server runs as the
``postgres`` system user.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DEBIAN_ROOT = "/usr/lib/postgresql"
SERVER_USER = "postgres"
PASSWORD = "tecli-test-secret"
_TIMEOUT_S = 60


class PostgresServerError(RuntimeError):
    """The server could not be set up, started or stopped (message holds the log tail)."""


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (-1,)


def _has_tools(folder: Path) -> bool:
    return all(os.access(folder / tool, os.X_OK) for tool in ("initdb", "pg_ctl"))


def find_binaries(debian_root: str | os.PathLike = DEBIAN_ROOT, path: str | None = None) -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None.

    The newest ``<debian_root>/<version>/bin`` holding both wins; else the folder of
    ``pg_ctl`` found on ``path`` (default: PATH) if ``initdb`` lies beside it.
    """
    root = Path(debian_root)
    if root.is_dir():
        versions = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: _version_key(d.name), reverse=True)
        for version in versions:
            if _has_tools(version / "bin"):
                return version / "bin"
    pg_ctl = shutil.which("pg_ctl", path=path)
    if pg_ctl is None or shutil.which("initdb", path=path) is None:
        return None
    for folder in (Path(pg_ctl).parent, Path(os.path.realpath(pg_ctl)).parent):
        if _has_tools(folder):
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One PostgreSQL server in a temporary folder; ``start()`` it, ``stop()`` it."""

    def __init__(self, bindir: str | os.PathLike | None = None) -> None:
        found = Path(bindir) if bindir is not None else find_binaries()
        if found is None:
            raise PostgresServerError("PostgreSQL binaries (initdb, pg_ctl) not found; apt-get install postgresql")
        self.bindir = found
        self.root: Path | None = None
        self.port: int | None = None
        self.running = False
        self.start_seconds: float | None = None
        self._as_user = SERVER_USER if os.geteuid() == 0 else None

    # -- paths ---------------------------------------------------------------
    @property
    def datadir(self) -> Path:
        return self._root / "data"

    @property
    def socketdir(self) -> Path:
        return self._root / "sock"

    @property
    def logfile(self) -> Path:
        return self._root / "server.log"

    @property
    def _root(self) -> Path:
        if self.root is None:
            raise PostgresServerError("server not started")
        return self.root

    # -- running the binaries -------------------------------------------------
    def _command(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bindir / tool), *args]
        if self._as_user is None:
            return argv
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", self._as_user, "--", *argv]
        return [shutil.which("su") or "su", self._as_user, "-s", "/bin/sh", "-c", shlex.join(argv)]

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = self._command(tool, *args)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            done = subprocess.run(
                argv, cwd=self._root, env=env, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=_TIMEOUT_S + 30,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresServerError(f"{shlex.join(argv)} failed: {exc}\n{self.log_tail()}") from exc
        if check and done.returncode != 0:
            raise PostgresServerError(
                f"{shlex.join(argv)} exited with {done.returncode}\n"
                f"stdout: {done.stdout.strip()}\nstderr: {done.stderr.strip()}\n{self.log_tail()}"
            )
        return done

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server log (empty when there is none yet)."""
        try:
            text = self.logfile.read_text(errors="replace")
        except (OSError, PostgresServerError):
            return ""
        tail = text.splitlines()[-lines:]
        return "server log (tail):\n" + "\n".join(tail) if tail else ""

    # -- life cycle -----------------------------------------------------------
    def start(self) -> "PostgresServer":
        """initdb a fresh cluster in a temporary folder and start it; returns self."""
        if self.running:
            return self
        began = time.perf_counter()
        self.root = Path(tempfile.mkdtemp(prefix="tecli-pg-"))
        try:
            self.socketdir.mkdir()
            if self._as_user is not None:
                try:
                    user = pwd.getpwnam(self._as_user)
                except KeyError as exc:
                    raise PostgresServerError(
                        f"running as root but there is no {self._as_user!r} system user to run PostgreSQL as"
                    ) from exc
                for folder in (self.root, self.socketdir):
                    os.chown(folder, user.pw_uid, user.pw_gid)
            password_file = self.root / "password"
            password_file.write_text(PASSWORD + "\n")
            if self._as_user is not None:
                os.chown(password_file, user.pw_uid, user.pw_gid)
            password_file.chmod(0o600)
            self._run(
                "initdb", "-D", str(self.datadir), "-U", "postgres", "--auth-local=trust",
                "--auth-host=scram-sha-256", f"--pwfile={password_file}",
                "--no-sync", "--encoding=UTF8", "--locale=C",
            )
            self._start_on_free_port()
        except BaseException:
            self._remove_folder()
            raise
        atexit.register(self.stop)
        self.start_seconds = time.perf_counter() - began
        return self

    def _write_settings(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socketdir}'",
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        # fsync off is safe against a killed server (only an OS crash loses data); synchronous_commit stays
        # on, so what was committed survives stop_immediately(). postgresql.auto.conf is read last.
        text = "".join(f"{key} = {value}\n" for key, value in settings.items())
        (self.datadir / "postgresql.auto.conf").write_text(text)

    def _pg_ctl_start(self) -> None:
        self._run("pg_ctl", "start", "-w", "-t", str(_TIMEOUT_S), "-D", str(self.datadir), "-l", str(self.logfile))
        self.running = True

    def _start_on_free_port(self, attempts: int = 3) -> None:
        # The port is free when picked but another process could take it first: retry.
        for attempt in range(attempts):
            self.port = _free_port()
            self._write_settings()
            try:
                self._pg_ctl_start()
                return
            except PostgresServerError:
                if attempt == attempts - 1:
                    raise

    def restart(self) -> None:
        """Start the server again on the same data folder and port (e.g. after stop_immediately)."""
        if self.running:
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.datadir))
            self.running = False
        self._pg_ctl_start()

    def stop_immediately(self) -> None:
        """Kill the server without a clean shutdown (it stays stopped until restart())."""
        self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.datadir))
        self.running = False

    def stop(self) -> None:
        """Stop the server (fast, else immediate) and remove its temporary folder."""
        if self.root is None:
            return
        try:
            if self.running or (self.datadir / "postmaster.pid").exists():
                done = self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.datadir), check=False)
                if done.returncode != 0:
                    self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.datadir), check=False)
        finally:
            self.running = False
            self._remove_folder()
            atexit.unregister(self.stop)

    def _remove_folder(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- databases ------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` on this server."""
        if self.port is None:
            raise PostgresServerError("server not started")
        return f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        """A psycopg connection in autocommit mode."""
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", password=PASSWORD, dbname=database,
            autocommit=True, connect_timeout=10,
        )

    def create_database(self, name: str) -> str:
        """Create the (new, empty) database ``name`` and return its URL."""
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
