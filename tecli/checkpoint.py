"""A run's training state as bytes for the database, and back, safely; a run's model as files.

The state is plain containers of tensors, numbers and strings, written with
torch.save; numpy arrays travel as tensors tagged {"numpy": tensor}. Reading
uses torch.load(weights_only=True), which builds nothing but tensors and plain
Python values, so a database row can never run code.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

_NUMPY = "numpy"


def _encode(value):
    if isinstance(value, np.ndarray):
        return {_NUMPY: torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value):
    if isinstance(value, dict):
        if value.keys() == {_NUMPY}:
            return value[_NUMPY].numpy()
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def dumps(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(_encode(state), buffer)
    return buffer.getvalue()


def loads(blob: bytes) -> dict:
    return _decode(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True))


def export_model(engine, run_id: int, folder: Path) -> tuple[Path, Path]:
    """Write run `run_id`'s model from its checkpoint (a completed run's is its final model):
    FOLDER/model.pt, a torch state dict for tecli.models.build_model(**model_args), and
    FOLDER/run.json, its configuration and where the weights come from."""
    from sqlalchemy.orm import Session

    from tecli.db.schema import Checkpoint, Run
    from tecli.errors import UserError, shown

    weights, about = folder / "model.pt", folder / "run.json"
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output {shown(folder)} is a file; pass a folder")
    if not folder.parent.is_dir():
        raise UserError(f"--output folder {shown(folder.parent)} does not exist; create it or pass another path")
    for path in (weights, about):
        if path.exists() or path.is_symlink():
            raise UserError(f"{shown(path)} exists already; pass another --output folder")
    with Session(engine) as session:
        run = session.get(Run, run_id) if 1 <= run_id < 2**31 else None
        if run is None:
            raise UserError(f"no run with id {run_id}; `tecli runs` lists the recorded runs")
        checkpoint = session.get(Checkpoint, run_id)
        if checkpoint is None:
            raise UserError(f"run {run_id} has no checkpoint to export (it ended before its first epoch did)")
        state = loads(checkpoint.state)
        description = {
            "run_id": run.id, "run_key": run.run_key, "status": run.status, "epoch": checkpoint.epoch,
            "epochs_planned": run.epochs_planned, "code_version": checkpoint.code_version,
            "model_args": state["model_args"], "config": run.config,
        }  # fmt: skip
    folder.mkdir(exist_ok=True)
    torch.save(state["model"], weights)
    about.write_text(json.dumps(description, indent=2) + "\n")
    return weights, about
