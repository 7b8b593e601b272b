"""Where tecli reads data and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Per-user cache: TECLI_CACHE_DIR, else $XDG_CACHE_HOME/tecli, else ~/.cache/tecli."""
    explicit = os.environ.get("TECLI_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "tecli"


def writable_folder(folder: Path) -> bool:
    """An existing folder we may write and that is not marked read-only.

    Root may write anywhere, but a folder with no write bits is meant to stay untouched.
    """
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return folder.is_dir() and bool(mode & 0o222) and os.access(folder, os.W_OK)


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Data root: the --data-dir argument, else TECLI_DATA_DIR, else <cache>/data."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("TECLI_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "data"
