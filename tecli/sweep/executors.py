"""Executors: where a sweep's runs train. LocalProcesses trains each run in a fresh
process on this machine; a cluster executor fits the same Executor shape.

A worker claims its run key in the database before it sets up (tecli.runner.run_claimed),
so several sweeps of one file, here or on other machines, train each key once; a key
claimed elsewhere is reported as `skipped`.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import random
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy.engine import URL

from tecli.spec import RunSpec


@dataclass(frozen=True)
class Task:
    """Everything a worker needs to train and record one run."""

    index: int
    spec: RunSpec
    db_url: URL
    sweep_id: int
    data_dir: Path | None
    device: str
    threads: int
    retry_failed: bool = False
    resume: bool = True  # an interrupted run of the key continues from its checkpoint


@dataclass(frozen=True)
class Event:
    """What a worker reports: kind is started | epoch | finished. `epoch`: with epoch, the
    epoch that finished; with started, the epochs already done (a resumed run)."""

    index: int
    kind: str
    run_id: int | None = None
    epoch: int | None = None
    test_acc: float | None = None
    status: str | None = None  # with finished: completed | failed | interrupted | skipped (claimed elsewhere)
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
        # A random order: sweeps sharing a grid then rarely start the same run at once
        # (the loser of a claim has paid a worker's start-up for nothing).
        waiting = random.Random().sample(list(tasks), len(tasks))
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

        def died(task: Task, process) -> None:
            """A worker that ended without a word (OOM kill, segfault): its run failed."""
            message = f"worker died (exit code {process.exitcode})"
            run_id = run_ids.get(task.index)
            if run_id is not None:
                from tecli.db.recording import fail_running
                from tecli.db.store import create_db_engine

                fail_running(create_db_engine(task.db_url), run_id, process.pid, message)
            report(Event(task.index, "finished", run_id=run_id, status="failed", message=message))

        by_index = {task.index: task for task in tasks}
        engines: dict[URL, object] = {}

        def taken(task: Task) -> bool:
            """Another sweep may have taken the key since the plan was made; spare the worker's start-up."""
            from tecli.db.recording import key_taken
            from tecli.db.store import create_db_engine

            if task.db_url not in engines:
                engines[task.db_url] = create_db_engine(task.db_url)
            return key_taken(engines[task.db_url], task.spec.run_key())
        try:
            while waiting or running:
                while waiting and len(running) < self.workers:
                    task = waiting.pop(0)
                    if taken(task):
                        report(Event(task.index, "finished", status="skipped", message="claimed elsewhere"))
                        continue
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
                            died(by_index[index], process)
                        del running[index]
        except BaseException:  # Ctrl-C, SIGTERM, or the database failing in this process
            for process in running.values():
                if process.exitcode is None:
                    process.terminate()  # SIGTERM: the run records itself as interrupted
            while any(process.exitcode is None for process in running.values()):
                try:
                    drain(0.2)  # keep reading while they stop: a full pipe would block them
                except Exception:
                    pass  # reporting may fail with the database; stopping the workers must not
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
    from sqlalchemy.exc import DBAPIError

    from tecli.db.recording import ClaimRefused, RunTakenOver
    from tecli.db.store import create_db_engine, describe, first_line
    from tecli.runner import RunFailed, RunInterrupted, configure, run_claimed, sigterm_as_interrupt

    def put(kind: str, **fields) -> None:
        events.put(Event(task.index, kind, **fields))

    engine = create_db_engine(task.db_url)
    run_id = None

    def started(new_id: int, epochs_done: int) -> None:
        nonlocal run_id
        run_id = new_id
        put("started", run_id=new_id, epoch=epochs_done)

    with sigterm_as_interrupt():  # from before the claim, so a stop never leaves the run `running`
        try:
            configure(task.device, task.threads)
            run_claimed(
                task.spec,
                engine,
                task.data_dir,
                task.device,
                task.sweep_id,
                retry_failed=task.retry_failed,
                resume=task.resume,
                on_start=started,
                on_epoch=lambda result: put("epoch", epoch=result.epoch, test_acc=result.test_acc),
            )
            put("finished", run_id=run_id, status="completed")
        except ClaimRefused as refused:
            put("finished", run_id=refused.run_id, status="skipped", message=f"claimed elsewhere: {refused}")
        except RunTakenOver as taken:
            put("finished", run_id=run_id, status="skipped", message=str(taken))
        except RunFailed as failure:
            put("finished", run_id=failure.run_id, status="failed", message=str(failure))
        except (RunInterrupted, KeyboardInterrupt) as stop:
            put("finished", run_id=run_id, status="interrupted", message=str(stop) or "interrupted")
        except DBAPIError as error:
            message = f"cannot use the database {describe(engine.url)}: {first_line(error.orig)}"
            put("finished", run_id=run_id, status="failed", message=message)
    events.close()
    events.join_thread()
