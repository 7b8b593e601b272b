"""Running a sweep: plan against the database, then train what is left on an executor.

Resume rules, per run key (the hash of the complete run specification):
- a `completed` run exists            -> done, skipped
- a run is `running` (alive elsewhere) -> skipped, another process is on it
- the newest attempt `failed`          -> skipped unless --retry-failed
- never run, or `interrupted`          -> to run (a retry is a new row: history is kept)
Interrupted runs are retried by default because an interruption (Ctrl-C, a killed
sweep, a power cut) says nothing about the run; a failure usually repeats.
Runs restart from epoch 1; there are no mid-run checkpoints.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tecli.spec import RunSpec
from tecli.store import Run, Sweep
from tecli.sweepfile import SweepSpec


@dataclass(frozen=True)
class PlannedRun:
    spec: RunSpec
    key: str
    state: str  # done | running | failed | to run

    @property
    def label(self) -> str:
        return f"{self.spec.dataset}/{self.spec.variant}/seed {self.spec.seed}"


def plan(engine: Engine, sweep: SweepSpec, retry_failed: bool) -> list[PlannedRun]:
    keys = [spec.run_key() for spec in sweep.runs]
    with Session(engine) as session:
        rows = session.execute(
            select(Run.run_key, Run.status).where(Run.run_key.in_(keys)).order_by(Run.id)
        ).all()
    history: dict[str, list[str]] = {}
    for key, status in rows:
        history.setdefault(key, []).append(status)

    def state(key: str) -> str:
        statuses = history.get(key, [])
        if "completed" in statuses:
            return "done"
        if "running" in statuses:
            return "running"
        if statuses and statuses[-1] == "failed" and not retry_failed:
            return "failed"
        return "to run"

    return [PlannedRun(spec, key, state(key)) for spec, key in zip(sweep.runs, keys)]


def register(engine: Engine, sweep: SweepSpec) -> int:
    """The sweep's row (name + file hash), created on first use; returns its id."""
    with Session(engine) as session, session.begin():
        row = session.scalar(select(Sweep).where(Sweep.name == sweep.name, Sweep.source_hash == sweep.source_hash))
        if row is None:
            row = Sweep(name=sweep.name, source=sweep.source, source_hash=sweep.source_hash, targets=sweep.targets)
            session.add(row)
            session.flush()
        return row.id


@dataclass(frozen=True)
class Task:
    """Everything a worker needs to train and record one run."""

    index: int
    spec: RunSpec
    db_url: str
    sweep_id: int
    data_dir: Path | None
    device: str
    threads: int


@dataclass(frozen=True)
class Event:
    """What a worker reports: kind is started | epoch | finished."""

    index: int
    kind: str
    run_id: int | None = None
    epoch: int | None = None
    test_acc: float | None = None
    status: str | None = None  # with finished: completed | failed | interrupted
    message: str = ""


class Executor(Protocol):
    """Runs tasks and reports their Events; a cluster executor (Dask, Ray) fits the same shape."""

    def run(self, tasks: Sequence[Task], report: Callable[[Event], None]) -> None: ...


class LocalProcesses:
    """Each run in its own fresh process (spawned), at most `workers` at a time.

    A process per run isolates crashes and frees memory between runs. Workers ignore
    Ctrl-C; on KeyboardInterrupt the parent stops scheduling and sends SIGTERM to the
    running workers, which record their runs as interrupted, then re-raises. Workers
    die with the parent (SIGTERM on Linux) if the sweep itself is killed.
    """

    def __init__(self, workers: int):
        self.workers = workers

    def run(self, tasks: Sequence[Task], report: Callable[[Event], None]) -> None:
        context = multiprocessing.get_context("spawn")
        events = context.Queue()
        waiting = list(tasks)
        running: dict[int, multiprocessing.Process] = {}
        finished: set[int] = set()
        run_ids: dict[int, int] = {}

        def drain(timeout: float) -> None:
            try:
                event = events.get(timeout=timeout)
                while True:
                    if event.kind == "started":
                        run_ids[event.index] = event.run_id
                    if event.kind == "finished":
                        finished.add(event.index)
                    report(event)
                    event = events.get_nowait()
            except queue.Empty:
                pass

        def died(task: Task, exitcode: int) -> None:
            """A worker that ended without a word (OOM kill, segfault): its run failed."""
            message = f"worker died (exit code {exitcode})"
            run_id = run_ids.get(task.index)
            if run_id is not None:
                from tecli.recording import finish_run
                from tecli.store import create_db_engine

                finish_run(create_db_engine(task.db_url), run_id, "failed", message, only_if_running=True)
            report(Event(task.index, "finished", run_id=run_id, status="failed", message=message))

        by_index = {task.index: task for task in tasks}
        try:
            while waiting or running:
                while waiting and len(running) < self.workers:
                    task = waiting.pop(0)
                    process = context.Process(target=_worker, args=(task, events, os.getpid()), daemon=False)
                    # Started with Ctrl-C ignored, so a worker still importing never prints a traceback.
                    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
                    try:
                        process.start()
                    finally:
                        signal.signal(signal.SIGINT, previous)
                    running[task.index] = process
                drain(0.2)
                for index, process in list(running.items()):
                    if process.exitcode is not None:
                        drain(0.5)  # its last events may still be in the pipe
                        if index not in finished:
                            died(by_index[index], process.exitcode)
                        del running[index]
        except KeyboardInterrupt:
            for process in running.values():
                if process.exitcode is None:
                    process.terminate()  # SIGTERM: the run records itself as interrupted
            while any(process.exitcode is None for process in running.values()):
                drain(0.2)  # keep reading while they stop: a full pipe would block them
            drain(0.5)
            raise


def _die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGTERM when the sweep process dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(task: Task, events, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent coordinates Ctrl-C
    _die_with_parent(parent_pid)
    from tecli.runner import RunFailed, RunInterrupted, execute
    from tecli.store import create_db_engine

    def put(kind: str, **fields) -> None:
        events.put(Event(task.index, kind, **fields))

    engine = create_db_engine(task.db_url)
    try:
        run_id, _ = execute(
            task.spec,
            engine,
            task.data_dir,
            task.device,
            task.threads,
            sweep_id=task.sweep_id,
            record_setup_errors=True,
            on_start=lambda run_id, data: put("started", run_id=run_id),
            on_epoch=lambda result: put("epoch", epoch=result.epoch, test_acc=result.test_acc),
        )
        put("finished", run_id=run_id, status="completed")
    except RunFailed as failure:
        put("finished", run_id=failure.run_id, status="failed", message=str(failure))
    except RunInterrupted as stop:
        put("finished", run_id=stop.run_id, status="interrupted", message=str(stop))
    events.close()
    events.join_thread()
