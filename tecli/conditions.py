"""Conditions of measurement: what a run's seconds depend on besides its specification.

Recorded with every run (device, GPU name, CPU threads used, CPU model, code
version); the report compares seconds only between runs measured under equal
conditions. The code version is the git commit when tecli runs from a checkout
(`git:<sha>`, with `+dirty:<hash of tecli's sources>` when tecli/ has uncommitted
changes), else the package version with that hash (`pkg:<version>+src:<hash>`).
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tecli import __version__

PACKAGE = Path(__file__).resolve().parent
# Conditions the report compares, in the order it names them.
CONDITION_FIELDS = ("device", "gpu_name", "threads", "cpu_model", "code_version")


@dataclass(frozen=True)
class Conditions:
    device: str
    gpu_name: str | None
    threads: int
    cpu_model: str | None
    code_version: str
    code_dirty: bool | None


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


@cache
def code_version() -> tuple[str, bool | None]:
    """(version string, dirty flag); the flag is None outside a git checkout."""
    top = _git("rev-parse", "--show-toplevel")
    commit = _git("rev-parse", "HEAD") if top and (PACKAGE.parent == Path(top).resolve()) else None
    if commit is None:
        return f"pkg:{__version__}+src:{source_hash()}", None
    dirty = bool(_git("status", "--porcelain", "--", str(PACKAGE)))
    return (f"git:{commit[:12]}+dirty:{source_hash()}" if dirty else f"git:{commit[:12]}"), dirty


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


def current_conditions(device: str) -> Conditions:
    """This process's conditions for a run on `device` (torch's threads as set now)."""
    import torch

    version, dirty = code_version()
    return Conditions(device, gpu_name(device), torch.get_num_threads(), cpu_model(), version, dirty)
