"""Execute one run in this process, record it, and show it: settings, progress, summary.

`tecli run` sets up first (data loaded, model built, sizes checked), then opens
the database and claims the run key: a user's mistake anywhere in set-up
records nothing and creates no file. A sweep's worker claims first and records
set-up errors as a failed run. SIGTERM is handled like Ctrl-C: the run is marked
`interrupted` and every finished epoch stays recorded.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tecli.errors import UserError, first_line, shown
from tecli.spec import RunSpec
from tecli.stopping import shielded, stop_signals

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from tecli.data import DataSplits
    from tecli.db.recording import Attempt
    from tecli.epoch import EpochResult
    from tecli.train import Training

MAX_THREADS = 1024


class RunFailed(Exception):
    """Training raised, or the database could not be written; recorded as failed where possible."""

    def __init__(self, run_id: int, message: str):
        super().__init__(f"run {run_id} failed: {message}")
        self.run_id = run_id


class WrongDataCopy(Exception):
    """A resumed run would continue on another copy of its data set than its epochs so far read."""


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM; the run is recorded as interrupted."""

    def __init__(self, run_id: int, epochs_done: int):
        super().__init__(f"run {run_id} interrupted after {epochs_done} finished epoch(s), all recorded")
        self.run_id = run_id


def check_settings(device: str, threads: int | None, here: bool = True, memory_format: str = "channels_last") -> str:
    """UserError for a device, thread count or memory format that cannot work (with
    here=False only the device's name is checked: a cluster's workers train); the torch
    device. Changes nothing in this process: a sweep checks before it forks workers."""
    from tecli.train import MEMORY_FORMATS

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"--device must be cpu or cuda, got {shown(device)!r}")
    if here and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but torch sees no CUDA device here; use --device cpu")
    if memory_format not in MEMORY_FORMATS:
        raise UserError(f"--memory-format must be {' or '.join(MEMORY_FORMATS)}, got {shown(memory_format)!r}")
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise UserError(f"--threads must be from 1 to {MAX_THREADS}, got {shown(threads)}")
    return device


def configure(device: str, threads: int | None, memory_format: str = "channels_last") -> str:
    """check_settings, then set torch's and numba's CPU threads in this process, which trains."""
    import numba
    import torch

    check_settings(device, threads, memory_format=memory_format)
    if threads is not None:
        # numba first: launching its OpenMP threading layer resets the process's OpenMP
        # thread count, torch's included (torch set first would train on every core).
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        torch.set_num_threads(threads)
    return device


@dataclass
class Prepared:
    """A run ready for its next batch: data in memory, model, optimizer and feedback built."""

    data: DataSplits
    training: Training


def prepare(
    spec: RunSpec,
    data_dir: Path | None,
    device: str,
    on_batch=None,
    checkpoint: bytes | None = None,
    memory_format: str = "channels_last",
    observe: int | None = None,
) -> Prepared:
    """Load the data and build the training (from a checkpoint, to resume), observed with a probe
    of `observe` training samples if given; a UserError for a mistake, before anything is recorded."""
    from tecli.checkpoint import loads
    from tecli.data import load_dataset
    from tecli.train import train

    data = load_dataset(spec.dataset, data_dir)
    spec.check_fits(len(data.x_train))
    if observe is not None and observe > len(data.x_train):
        raise UserError(
            f"a probe of {observe} samples is larger than {spec.dataset}'s training set ({len(data.x_train)} samples); "
            "use a smaller --probe (observe in sweep files)"
        )
    training = train(spec, data, device=device, on_batch=on_batch, memory_format=memory_format, observe=observe)
    if checkpoint is not None:
        training.load_state_dict(loads(checkpoint))
    return Prepared(data, training)


def record_training(
    engine: Engine,
    claim: Callable[[], Attempt],
    setup: Callable[[Attempt], Training],
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> tuple[Attempt, list[EpochResult]]:
    """An attempt from its claim to its final status, with its heartbeat all along.

    `claim()` takes the run (its errors propagate: nothing is held yet); the claim and
    the heartbeat's start share one shielded block, so a stop arriving from then on
    always finds a `try` that records the run interrupted. `setup(attempt)` returns the
    Training (a sweep's run loads its data here, after claiming; a set-up mistake is
    recorded as a failed run). Each epoch is committed as it ends, with the training's
    checkpoint in the same transaction. The database failing mid-run (disk full,
    server gone) ends the run with one line; it is marked failed if the database still
    takes writes, else liveness marks it interrupted later (its process gone, or its
    heartbeat stale). An attempt declared dead by another process stops with
    RunTakenOver.
    """
    from sqlalchemy.exc import DBAPIError

    from tecli.checkpoint import dumps
    from tecli.db.recording import Heartbeat, RunTakenOver, finish_run, record_epoch
    from tecli.db.schema import RunStatus
    from tecli.db.store import describe

    results: list[EpochResult] = []
    attempt: Attempt | None = None

    def finish(status: RunStatus, error: str) -> None:
        try:
            with shielded():
                finish_run(engine, attempt, status, error)
        except DBAPIError:
            pass  # left `running`; liveness marks it interrupted later
        except KeyboardInterrupt:
            pass  # a second stop during the write: the run is ending already

    def ended(error: BaseException) -> BaseException:
        """Record how the attempt ended; the exception to raise in its place."""
        if isinstance(error, KeyboardInterrupt):
            finish(RunStatus.INTERRUPTED, "interrupted by Ctrl-C or SIGTERM")
            return RunInterrupted(attempt.run_id, len(results))
        if isinstance(error, DBAPIError):  # also when every epoch is recorded but not that the run completed
            message = f"cannot write the database {describe(engine.url)}: {first_line(error.orig)}"
            finish(RunStatus.FAILED, message)
            return RunFailed(attempt.run_id, message)
        if isinstance(error, WrongDataCopy):
            finish(RunStatus.INTERRUPTED, str(error))
            return RunFailed(attempt.run_id, str(error))
        if isinstance(error, UserError):
            finish(RunStatus.FAILED, str(error))
            return RunFailed(attempt.run_id, shown(str(error)))
        finish(RunStatus.FAILED, "".join(traceback.format_exception(error)))
        return RunFailed(attempt.run_id, f"{type(error).__name__}: {shown(error)}")

    with stop_signals(), ExitStack() as stack:
        try:
            with shielded():
                attempt = claim()
                stack.enter_context(Heartbeat(engine, attempt))
            training = setup(attempt)
            for result in training:
                with shielded():  # a stop waits for the epoch's commit
                    record_epoch(engine, attempt, result, dumps(training.state_dict()))
                results.append(result)
                if on_epoch:
                    on_epoch(result)
            with shielded():
                completed = finish_run(engine, attempt, RunStatus.COMPLETED, None)
        except (KeyboardInterrupt, Exception) as error:
            if attempt is None or isinstance(error, RunTakenOver):
                raise  # nothing claimed, or no longer this process's run
            stack.close()  # the heartbeat stops before the final status is written
            raise ended(error) from error
    if not completed:
        raise RunTakenOver(f"run {attempt.run_id} was declared dead by another process before it could finish")
    return attempt, results


def run_claimed(
    spec: RunSpec,
    engine: Engine,
    data_dir: Path | None,
    device: str,
    sweep_id: int,
    retry_failed: bool = False,
    resume: bool = True,
    on_start: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    memory_format: str = "channels_last",
    observe: int | None = None,
) -> int:
    """A sweep's run: claim the key first (so a second sweep does not load data for it),
    then set up and train (observed with a probe of `observe` samples, if given); with
    resume, an interrupted run of the key continues from its checkpoint. Raises
    ClaimRefused when the key is taken; a set-up error is recorded as a failed run
    (RunFailed). on_start(run id, epochs already done)."""
    from tecli.conditions import current_conditions
    from tecli.db.recording import claim_run, set_data_copy

    def claim() -> Attempt:
        return claim_run(
            engine, spec, current_conditions(device, memory_format, observe), sweep_id=sweep_id, retry_failed=retry_failed,
            resume=resume,
        )  # fmt: skip

    def setup(attempt: Attempt) -> Training:
        if on_start:
            on_start(attempt.run_id, attempt.epochs_done)
        prepared = prepare(
            spec, data_dir, device, on_batch, checkpoint=attempt.checkpoint, memory_format=memory_format, observe=observe
        )
        if attempt.checkpoint is None:
            with shielded():
                set_data_copy(engine, attempt, prepared.data.copy)
        elif attempt.data_copy not in (None, prepared.data.copy):
            raise WrongDataCopy(
                f"run {attempt.run_id} read {attempt.data_copy}, but this worker finds {prepared.data.copy}; "
                "it stays interrupted for a worker with that copy (or --restart)"
            )
        return prepared.training

    attempt, _ = record_training(engine, claim, setup, on_epoch)
    return attempt.run_id


def run_one(
    spec: RunSpec | None,
    db: str | None,
    data_dir: Path | None,
    device: str | None,
    threads: int | None,
    resume: int | None = None,
    memory_format: str | None = None,
    observe: int | None = None,
) -> int:
    """`tecli run`: set up, then open the database and claim the key, train with a progress
    bar, summarize. With resume (a run id), continue that run from its checkpoint instead.
    With observe (a probe size), measure the layers after every epoch (tecli.observe); a
    resume observes as the run's last attempt did unless observe is given.

    Everything a user can get wrong (device, threads, data, sizes, the --db path, a run
    that cannot be resumed) is checked before anything is written, so a mistake leaves
    no file and no row behind.
    """
    from tecli.checkpoint import loads
    from tecli.conditions import current_conditions
    from tecli.db.liveness import Lease
    from tecli.db.recording import ClaimRefused, ResumeRefused, check_resumable, claim_run, resume_run
    from tecli.db.store import database_url, open_database

    database_url(db, must_exist=resume is not None)
    Lease.from_env()
    engine = None
    done = 0
    if resume is not None:
        engine = open_database(db, create=False)
        try:  # the refusals depend on the code version, which does not depend on the device
            target = check_resumable(engine, resume, current_conditions("cpu"))
        except ResumeRefused as refused:
            raise UserError(str(refused)) from None
        spec, done = RunSpec.from_dict(target.config), target.epoch
        device = device or target.device  # by default where it ran before, so it continues bit for bit
        threads = threads or target.threads
        memory_format = memory_format or target.memory_format
        observe = observe or target.observe
    memory_format = memory_format or "channels_last"
    device = configure(device or "cpu", threads, memory_format=memory_format)
    conditions = current_conditions(device, memory_format, observe)
    console = Console()
    progress = _progress(console)
    task = progress.add_task("train", total=None, epoch=done + 1, epochs=spec.epochs)

    def on_batch(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    def on_epoch(result: EpochResult) -> None:
        progress.console.print(_epoch_line(result, spec.epochs, spec.te is not None), soft_wrap=True)
        if spec.te is not None and result.factor_dev_max == 0:
            progress.console.print(_inert_line(result, spec), soft_wrap=True, markup=False)
        progress.update(task, completed=0, epoch=min(result.epoch + 1, spec.epochs))

    prepared = prepare(spec, data_dir, device, on_batch, memory_format=memory_format, observe=observe)
    data = prepared.data
    if resume is not None:
        if target.data_copy not in (None, data.copy):
            raise UserError(f"run {resume} read {target.data_copy}, but here the data set is {data.copy}; pass --data-dir")
        try:
            prepared.training.load_state_dict(loads(target.checkpoint))
        except Exception as error:  # a damaged row, or one weights-only loading refuses
            raise UserError(f"run {resume}'s checkpoint cannot be loaded ({type(error).__name__}: {shown(error)}); start it over") from None
        try:
            attempt = resume_run(engine, resume, conditions, from_epoch=target.epoch)
        except ResumeRefused as refused:  # changed since the look above
            raise UserError(str(refused)) from None
        started = f"run {attempt.run_id} resumed after epoch {prepared.training.epoch}"
    else:
        engine = open_database(db)
        try:
            attempt = claim_run(engine, spec, conditions, data_copy=data.copy, rerun_completed=True)
        except ClaimRefused as refused:
            raise UserError(f"{refused}; a run key is trained by one process at a time (`tecli runs show {refused.run_id}`)") from None
        started = f"run {attempt.run_id}"
    console.print(
        f"{started}: [bold]{spec.dataset}[/] ({data.copy}): {len(data.x_train)} train / "
        f"{len(data.x_test)} test, variant [bold]{spec.variant}[/], seed {spec.seed}, "
        f"run key {spec.run_key()}, device {device}, threads {conditions.threads}, {memory_format}"
        + (f", observing a probe of {observe} training samples" if observe else ""),
        soft_wrap=True,
    )
    with progress:
        _, results = record_training(engine, lambda: attempt, lambda _: prepared.training, on_epoch)
    console.print(_summary(spec, results))
    return attempt.run_id


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
    observed = f", observed in {r.observe_seconds:.2f} s" if r.observe_seconds is not None else ""
    return (
        f"epoch {r.epoch:>3}/{epochs}  train loss {r.train_loss:.4f} acc {r.train_acc:.4f}  "
        f"test loss {r.test_loss:.4f} acc {r.test_acc:.4f}  {r.seconds:6.2f} s{te}{observed}"
    )


def _threshold_text(g: float | str) -> str:
    """A threshold as the warning shows it: a number (0.5) or its name (median)."""
    return g if isinstance(g, str) else f"{g:g}"


def _inert_line(r: EpochResult, spec: RunSpec) -> str:
    """The warning for an epoch in which the feedback changed no gradient: the run is its baseline there."""
    g, g_out = _threshold_text(spec.te.threshold), _threshold_text(spec.te.threshold_out)
    if r.te_positive_share is None:
        why = "no TE refresh has happened yet"
    elif r.target_fire_rate == 0:
        why = f"no target neuron fired (threshold_out {g_out}, threshold {g})"
    elif r.source_fire_rate == 0:
        why = f"no source neuron fired (threshold {g})"
    else:
        why = "every TE was 0" if r.te_positive_share == 0 else f"lam is {spec.te.lam:g}"
    return f"warning: epoch {r.epoch}: the TE feedback changed nothing (all factors 1): {why}; this epoch trained as the baseline"


def _summary(spec: RunSpec, results: list[EpochResult]) -> Table:
    """This process's epochs (a resumed run's earlier ones are in `tecli runs show`)."""
    table = Table(title=f"{spec.dataset} / {spec.variant} / seed {spec.seed}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("epochs trained here", str(len(results)))
    if not results:
        return table
    best = max(results, key=lambda r: r.test_acc)
    total = sum(r.seconds for r in results)
    te_total = sum(r.te_seconds for r in results)
    table.add_row("final test accuracy", f"{results[-1].test_acc:.4f}")
    table.add_row("best test accuracy", f"{best.test_acc:.4f} (epoch {best.epoch})")
    table.add_row("mean epoch time", f"{total / len(results):.2f} s")
    table.add_row("TE share of time", f"{te_total / total:.1%}" if spec.te else "-")
    if spec.stop_at is not None:
        reached = results[-1].test_acc >= spec.stop_at
        table.add_row("stop at", f"{spec.stop_at:g}: " + (f"reached in epoch {results[-1].epoch}" if reached else "not reached"))
    return table
