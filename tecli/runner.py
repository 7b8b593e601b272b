"""Execute one run in this process, record it, and show it: settings, progress, summary.

The database is opened (and checked) first, then the data is loaded and the
model built, and only then is the run inserted: a user's mistake anywhere in
that set-up records nothing. SIGTERM is handled like Ctrl-C: the run is marked
`interrupted` and every finished epoch stays recorded.
"""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tecli.errors import UserError
from tecli.spec import RunSpec

if TYPE_CHECKING:
    from tecli.data import DataSplits
    from tecli.epoch import EpochResult


class RunFailed(Exception):
    """Training raised; the run is recorded as failed with the traceback."""

    def __init__(self, run_id: int, error: BaseException):
        super().__init__(f"run {run_id} failed: {type(error).__name__}: {error}")
        self.run_id = run_id


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM; the run is recorded as interrupted."""

    def __init__(self, run_id: int, epochs_done: int):
        super().__init__(f"run {run_id} interrupted after {epochs_done} finished epoch(s), all recorded")
        self.run_id = run_id


def configure(device: str, threads: int | None) -> str:
    """Check the device and set torch's and numba's CPU threads; return the torch device."""
    import numba
    import torch

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device here; use --device cpu")
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return device


@contextmanager
def sigterm_as_interrupt():
    """Within the block SIGTERM raises KeyboardInterrupt, so both stop a run the same way."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def execute(
    spec: RunSpec,
    engine,
    data_dir: Path | None,
    device: str,
    threads: int | None,
    sweep_id: int | None = None,
    record_setup_errors: bool = False,
    on_start: Callable[[int, DataSplits], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> tuple[int, list[EpochResult]]:
    """Train and record one run; returns (run id, epoch results).

    A UserError in set-up (data, model) records nothing, unless record_setup_errors
    (sweeps), where any set-up error is recorded as a failed run with its message.
    """
    from tecli.data import load_dataset
    from tecli.recording import Heartbeat, finish_run, insert_run, record_epoch
    from tecli.train import train

    device = configure(device, threads)
    try:
        data = load_dataset(spec.dataset, data_dir)
        epochs = train(spec, data, device=device, on_batch=on_batch)
    except Exception as error:
        if not record_setup_errors:
            raise
        run_id = insert_run(engine, spec, "-", device, threads, sweep_id)
        finish_run(engine, run_id, "failed", str(error) if isinstance(error, UserError) else traceback.format_exc())
        raise RunFailed(run_id, error) from None
    run_id = insert_run(engine, spec, data.copy, device, threads, sweep_id)
    if on_start:
        on_start(run_id, data)
    results: list[EpochResult] = []
    with Heartbeat(engine, run_id), sigterm_as_interrupt():
        try:
            for result in epochs:
                record_epoch(engine, run_id, result)
                results.append(result)
                if on_epoch:
                    on_epoch(result)
        except KeyboardInterrupt:
            finish_run(engine, run_id, "interrupted", "interrupted by Ctrl-C or SIGTERM")
            raise RunInterrupted(run_id, len(results)) from None
        except Exception as error:
            finish_run(engine, run_id, "failed", traceback.format_exc())
            raise RunFailed(run_id, error) from error
        finish_run(engine, run_id, "completed")
    return run_id, results


def run_one(spec: RunSpec, db: str | None, data_dir: Path | None, device: str, threads: int | None) -> int:
    """`tecli run`: execute one run in this process with a progress bar and a summary."""
    from tecli.store import open_database

    console = Console()
    engine = open_database(db)
    progress = _progress(console)
    task = progress.add_task("train", total=None, epoch=1, epochs=spec.epochs)

    def on_start(run_id: int, data: DataSplits) -> None:
        console.print(
            f"run {run_id}: [bold]{spec.dataset}[/] ({data.copy}): {len(data.x_train)} train / "
            f"{len(data.x_test)} test, variant [bold]{spec.variant}[/], seed {spec.seed}, "
            f"run key {spec.run_key()}, device {device}, threads {threads or os.cpu_count()}",
            soft_wrap=True,
        )

    def on_batch(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    def on_epoch(result: EpochResult) -> None:
        progress.console.print(_epoch_line(result, spec.epochs, spec.te is not None), soft_wrap=True)
        progress.update(task, completed=0, epoch=min(result.epoch + 1, spec.epochs))

    with progress:
        run_id, results = execute(
            spec, engine, data_dir, device, threads, on_start=on_start, on_batch=on_batch, on_epoch=on_epoch
        )
    console.print(_summary(spec, results))
    return run_id


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _epoch_line(r: EpochResult, epochs: int, is_te: bool) -> str:
    if not is_te:
        te = ""
    elif r.te_mean is None:
        te = f", TE {r.te_share:5.1%} of time, no TE refresh yet"
    else:
        te = f", TE {r.te_share:5.1%} of time, mean TE {r.te_mean:.4f} max {r.te_max:.3f} bits"
    return (
        f"epoch {r.epoch:>3}/{epochs}  train loss {r.train_loss:.4f} acc {r.train_acc:.4f}  "
        f"test loss {r.test_loss:.4f} acc {r.test_acc:.4f}  {r.seconds:6.2f} s{te}"
    )


def _summary(spec: RunSpec, results: list[EpochResult]) -> Table:
    best = max(results, key=lambda r: r.test_acc)
    total = sum(r.seconds for r in results)
    te_total = sum(r.te_seconds for r in results)
    table = Table(title=f"{spec.dataset} / {spec.variant} / seed {spec.seed}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("epochs", str(len(results)))
    table.add_row("final test accuracy", f"{results[-1].test_acc:.4f}")
    table.add_row("best test accuracy", f"{best.test_acc:.4f} (epoch {best.epoch})")
    table.add_row("mean epoch time", f"{total / len(results):.2f} s")
    table.add_row("TE share of time", f"{te_total / total:.1%}" if spec.te else "-")
    return table
