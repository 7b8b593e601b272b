"""Looking at recorded runs: queries returning plain dicts, and their rich tables."""

from __future__ import annotations

from datetime import datetime

from rich import box
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tecli.errors import UserError, shown
from tecli.db.schema import Checkpoint, Epoch, Run, Sweep

MAX_ID = 2**31 - 1  # ids are 32-bit integers; a larger one cannot exist
RUN_FIELDS = (
    "id", "run_key", "dataset", "data_copy", "variant", "seed", "status", "epochs_planned",
    "started_at", "finished_at", "heartbeat_at", "host", "pid", "boot_id", "pid_namespace", "lease_seconds",
    "device", "gpu_name", "threads", "memory_format", "observe", "cpu_model", "code_version", "code_commit", "code_dirty", "tecli_version", "torch_version", "torchvision_version", "numba_version", "python_version", "error",
)  # fmt: skip
EPOCH_FIELDS = (
    "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "te_seconds", "te_mean", "te_max",
    "cpu_seconds", "observe_seconds", "source_fire_rate", "target_fire_rate", "te_positive_share", "factor_dev_mean",
    "factor_dev_max",
)  # fmt: skip


def _plain(value):
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else value


def list_runs(
    engine: Engine,
    dataset: str | None = None,
    variant: str | None = None,
    status: str | None = None,
    sweep: str | None = None,
) -> list[dict]:
    """Runs, newest last, each with its sweep name, epochs done and last test accuracy."""
    last = (
        select(Epoch.run_id, func.count().label("epochs_done"), func.max(Epoch.epoch).label("last_epoch"))
        .group_by(Epoch.run_id)
        .subquery()
    )
    query = (
        select(Run, Sweep.name, last.c.epochs_done, Epoch.test_acc)
        .outerjoin(Sweep, Run.sweep_id == Sweep.id)
        .outerjoin(last, last.c.run_id == Run.id)
        .outerjoin(Epoch, (Epoch.run_id == Run.id) & (Epoch.epoch == last.c.last_epoch))
        .order_by(Run.id)
    )
    for column, value in ((Run.dataset, dataset), (Run.variant, variant), (Run.status, status), (Sweep.name, sweep)):
        if value is not None:
            query = query.where(column == value)
    with Session(engine) as session:
        return [
            {
                **{f: _plain(getattr(run, f)) for f in RUN_FIELDS},
                "sweep": sweep_name,
                "epochs_done": epochs_done or 0,
                "last_test_acc": test_acc,
            }
            for run, sweep_name, epochs_done, test_acc in session.execute(query)
        ]


ATTEMPT_FIELDS = (
    "number", "first_epoch", "status", "started_at", "ended_at", "host", "pid", "device", "gpu_name", "threads",
    "memory_format", "observe", "cpu_model", "code_version", "error",
)  # fmt: skip


def show_run(engine: Engine, run_id: int) -> dict:
    """One run with its complete configuration, its attempts (where it ran, stopped and
    resumed), its checkpoint and every recorded epoch."""
    with Session(engine) as session:
        run = session.get(Run, run_id) if 1 <= run_id <= MAX_ID else None
        if run is None:
            raise UserError(f"no run with id {shown(run_id)}; `tecli runs` lists the recorded runs")
        return {
            **{f: _plain(getattr(run, f)) for f in RUN_FIELDS},
            "sweep": run.sweep.name if run.sweep else None,
            "config": run.config,
            "attempts": [{f: _plain(getattr(a, f)) for f in ATTEMPT_FIELDS} for a in run.attempts],
            "checkpoint_epoch": session.scalar(select(Checkpoint.epoch).where(Checkpoint.run_id == run_id)),
            "epochs": [{f: getattr(e, f) for f in EPOCH_FIELDS} for e in run.epochs],
        }


def _number(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def runs_table(runs: list[dict]) -> Table:
    table = Table(title=f"{len(runs)} run(s)", box=box.SIMPLE_HEAD)
    for column in ("id", "dataset", "variant", "seed", "status", "epochs", "test acc", "sweep", "started (UTC)"):
        justify = "right" if column in ("id", "seed", "epochs", "test acc") else "left"
        table.add_column(column, justify=justify, no_wrap=column != "sweep")
    for r in runs:
        table.add_row(
            str(r["id"]), r["dataset"], r["variant"], str(r["seed"]), r["status"],
            f"{r['epochs_done']}/{r['epochs_planned']}", _number(r["last_test_acc"]), r["sweep"] or "-",
            r["started_at"][5:16].replace("T", " "),
        )  # fmt: skip
    return table


def run_tables(run: dict) -> tuple[Table, Table, Table]:
    """(settings table, attempts table, per-epoch table) of one run."""
    settings = Table(title=f"run {run['id']}: {run['dataset']} / {run['variant']} / seed {run['seed']}", show_header=False)
    settings.add_column("field")
    settings.add_column("value")
    for field in RUN_FIELDS[1:]:
        if run[field] is not None:
            settings.add_row(field, str(run[field]))
    for key, value in _flatten(run["config"]):
        settings.add_row(f"config.{key}", str(value))
    if run["checkpoint_epoch"] is not None:
        settings.add_row("checkpoint", f"after epoch {run['checkpoint_epoch']}")
    attempts = Table(title="attempts (a resumed run has several)", box=box.SIMPLE_HEAD)
    for column in ("#", "from epoch", "status", "started (UTC)", "ended (UTC)", "host", "pid", "device", "threads", "format"):
        attempts.add_column(column, justify="right" if column in ("#", "from epoch", "pid", "threads") else "left")
    for a in run["attempts"]:
        attempts.add_row(
            str(a["number"]), str(a["first_epoch"]), a["status"], a["started_at"][5:19].replace("T", " "),
            (a["ended_at"] or "-")[5:19].replace("T", " ") or "-",
            a["host"], str(a["pid"]), a["device"], str(a["threads"] if a["threads"] is not None else "-"),
            a["memory_format"] or "-",
        )  # fmt: skip
    epochs = Table(title="epochs")
    for column in ("epoch", "train loss", "train acc", "test loss", "test acc", "s", "TE s", "TE mean", "TE max"):
        epochs.add_column(column, justify="right")
    for e in run["epochs"]:
        epochs.add_row(
            str(e["epoch"]), *(_number(e[f]) for f in EPOCH_FIELDS[1:5]), _number(e["seconds"], 2),
            _number(e["te_seconds"], 3), _number(e["te_mean"]), _number(e["te_max"]),
        )  # fmt: skip
    return settings, attempts, epochs


def _flatten(config: dict, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
