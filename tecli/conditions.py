"""Conditions of measurement: what a run's seconds depend on besides its specification.

Recorded with every run (device type, GPU name, CPU threads used, memory format,
CPU model, code version); the report compares seconds only between runs measured
under equal conditions. The code version is a hash of tecli's own sources
(`src:<12 hex digits>`): what ran, whether from a checkout or an installed
package, and unchanged by commits that touch only documents or results. Beside
it each run records the git commit and whether tecli/ had uncommitted changes
when it runs from a checkout (None otherwise), and the package version.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path


PACKAGE = Path(__file__).resolve().parent
# Conditions the report compares, in the order it names them.
CONDITION_FIELDS = ("device", "gpu_name", "threads", "memory_format", "cpu_model", "code_version")


@dataclass(frozen=True)
class Conditions:
    device: str
    gpu_name: str | None
    threads: int
    memory_format: str  # of the model and its inputs: channels_last or contiguous (tecli.train)
    cpu_model: str | None
    code_version: str
    code_commit: str | None
    code_dirty: bool | None
    # The probe size of --observe (None: not observed; tecli.observe). Recorded with the conditions,
    # not compared by the report: observing runs after each epoch's timed span.
    observe: int | None = None


@cache
def source_hash() -> str:
    """sha256 (12 hex digits) over tecli's Python sources and migrations, by relative path."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in (".py", ".mako") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(PACKAGE), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def code_version() -> str:
    return f"src:{source_hash()}"


@cache
def git_state() -> tuple[str | None, bool | None]:
    """(commit, uncommitted changes in tecli/) when tecli runs from a git checkout, else (None, None)."""
    top = _git("rev-parse", "--show-toplevel")
    commit = _git("rev-parse", "HEAD") if top and (PACKAGE.parent == Path(top).resolve()) else None
    if commit is None:
        return None, None
    return commit, bool(_git("status", "--porcelain", "--", str(PACKAGE)))


@cache
def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def current_conditions(device: str, memory_format: str = "channels_last", observe: int | None = None) -> Conditions:
    """This process's conditions for a run on `device` in `memory_format`, observed with a probe of
    `observe` samples or not at all (torch's threads as set now).

    The device is recorded by type (cpu, cuda): which GPU it was is its name."""
    import torch

    commit, dirty = git_state()
    device_type = torch.device(device).type
    return Conditions(
        device_type, gpu_name(device), torch.get_num_threads(), memory_format, cpu_model(), code_version(), commit, dirty,
        observe,
    )
