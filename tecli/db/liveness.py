"""Who owns a running run, and when another process may call that owner dead.

An owner is one process: a random token, the hostname, the kernel's boot id, the
pid namespace and the pid with its start time. Two records are the same place
only when hostname, boot id and pid namespace all agree; containers and cluster
nodes often share a hostname, and pids mean nothing across namespaces. Then, and
only then, the process table decides (the pid is gone, or now belongs to a later
process). Anywhere else only the heartbeat lease decides: a live run writes its
heartbeat every `heartbeat_seconds`; once its last heartbeat is older than its
recorded `lease_seconds`, it is dead. Heartbeats use each machine's UTC clock,
so machines sharing a database need clocks within a small part of the lease (NTP).
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

from tecli.errors import UserError, shown

HEARTBEAT_SECONDS = 30.0
LEASE_SECONDS = 300.0


@dataclass(frozen=True)
class Lease:
    """The named liveness settings; TECLI_HEARTBEAT_SECONDS and TECLI_LEASE_SECONDS override them."""

    heartbeat_seconds: float = HEARTBEAT_SECONDS
    lease_seconds: float = LEASE_SECONDS

    @classmethod
    def from_env(cls) -> "Lease":
        """The settings, checked: finite, and a lease of at least three heartbeats."""
        values = {}
        for name, default in (("TECLI_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS), ("TECLI_LEASE_SECONDS", LEASE_SECONDS)):
            text = os.environ.get(name)
            try:
                values[name] = float(text) if text is not None else default
            except ValueError:
                values[name] = math.nan
            if not (math.isfinite(values[name]) and values[name] > 0):
                raise UserError(f"{name} must be a positive number of seconds, got {shown(text)!r}")
        beat, lease = values["TECLI_HEARTBEAT_SECONDS"], values["TECLI_LEASE_SECONDS"]
        if lease < 3 * beat:
            raise UserError(
                f"TECLI_LEASE_SECONDS ({lease:g}) must be at least 3 x TECLI_HEARTBEAT_SECONDS ({beat:g}), "
                "or a live run could be taken for dead between two heartbeats"
            )
        return cls(beat, lease)


@dataclass(frozen=True)
class Owner:
    token: str
    host: str
    boot_id: str | None
    pid_namespace: str | None
    pid: int
    pid_started: int | None

    def same_place(self, host: str, boot_id: str | None, pid_namespace: str | None) -> bool:
        """True only when a record's process table is this one's: same host, boot and pid namespace."""
        return (
            self.boot_id is not None
            and self.pid_namespace is not None
            and (host, boot_id, pid_namespace) == (self.host, self.boot_id, self.pid_namespace)
        )


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields from the state on (field 3 is [0]); None if gone or unknown."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split() if stat is not None and ")" in stat else None


def process_started(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat); None if gone or unknown."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


@cache
def _token() -> str:
    return secrets.token_hex(16)


os.register_at_fork(after_in_child=_token.cache_clear)  # a forked worker is an owner of its own


def current_owner() -> Owner:
    """This process as an owner (the token is drawn once per process)."""
    pid = os.getpid()
    return Owner(
        token=_token(),
        host=socket.gethostname(),
        boot_id=_read("/proc/sys/kernel/random/boot_id"),
        pid_namespace=_pid_namespace(),
        pid=pid,
        pid_started=process_started(pid),
    )


def process_alive(pid: int, pid_started: int | None) -> bool:
    """Is this exact process still there? A pid reused by a later process does not count,
    nor a zombie (killed, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _stat(pid)
    if fields is None:
        return True  # no /proc here: the signal's answer is all we know
    if fields[0] in ("Z", "X"):
        return False
    if pid_started is None:
        return True
    now = process_started(pid)
    return now is None or now == pid_started


def is_dead(run, me: Owner, now: datetime) -> bool:
    """Judge a `running` run's row (host, boot_id, pid_namespace, pid, pid_started,
    heartbeat_at, lease_seconds) from `me`'s place at `now` (naive UTC)."""
    lease = run.lease_seconds if run.lease_seconds is not None else LEASE_SECONDS
    stale = run.heartbeat_at < now - timedelta(seconds=lease)
    if me.same_place(run.host, run.boot_id, run.pid_namespace):
        # A live process with a stale heartbeat no longer trains the run: a warm sweep
        # worker outlives its runs, and one whose final write failed goes on to the next.
        return stale or not process_alive(run.pid, run.pid_started)
    return stale
