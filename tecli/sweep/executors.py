"""What every executor shares: the Task a worker gets, the Events it reports, and
`train_task`, the worker's body. Executors decide where tasks run: tecli.sweep.local
(a pool of warm processes on this machine) and tecli.sweep.ray_cluster (Ray).

A worker claims its run key in the database before it sets up (tecli.runner.run_claimed),
so several sweeps of one file, here or on other machines, train each key once; a key
claimed elsewhere is reported as `skipped`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy.engine import URL

from tecli.spec import RunSpec


class ExecutorLost(Exception):
    """The executor itself failed mid-sweep (a cluster's head went away); its runs are left
    to the liveness rules."""


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
    memory_format: str = "channels_last"
    observe: int | None = None  # probe size (tecli.observe); None: not observed


@dataclass(frozen=True)
class Event:
    """What a worker reports: kind is started | epoch | finished. `epoch`: with epoch, the
    epoch that finished; with started, the epochs already done (a resumed run). `pid`:
    with started, the worker process that holds the run."""

    index: int
    kind: str
    run_id: int | None = None
    epoch: int | None = None
    test_acc: float | None = None
    status: str | None = None  # with finished: completed | failed | interrupted | skipped (claimed elsewhere)
    message: str = ""
    pid: int | None = None


class Executor(Protocol):
    """Runs tasks and reports their Events. On KeyboardInterrupt (Ctrl-C, SIGTERM) it stops
    its running tasks, which record themselves interrupted, and re-raises."""

    def start(self) -> None:
        """Get ready (connect to a cluster); a UserError for a setting that cannot work."""

    def check(self, threads: int, url: URL) -> None:
        """UserError if runs of `threads` CPU threads, recording into `url`, cannot work here.
        Called after start() and before anything is written."""

    def default_threads(self) -> int:
        """CPU threads per run when the sweep sets none."""

    def describe(self) -> str:
        """For the sweep's first line, e.g. `2 local workers`."""

    def run(self, tasks: Sequence[Task], report: Callable[[Event], None]) -> None: ...


def train_task(task: Task, put: Callable[[Event], None], on_batch: Callable[[int, int], None] | None = None) -> str:
    """Claim, train and record one run in this process; report it through `put` and return
    its final status. Ctrl-C or SIGTERM (tecli.stopping) stops it as `interrupted`."""
    from sqlalchemy.exc import DBAPIError

    from tecli.db.recording import ClaimRefused, RunTakenOver
    from tecli.db.store import create_db_engine, describe
    from tecli.errors import first_line
    from tecli.runner import RunFailed, RunInterrupted, configure, run_claimed

    run_id = None

    def finished(status: str, message: str = "", run: int | None = None) -> str:
        put(Event(task.index, "finished", run_id=run or run_id, status=status, message=message))
        return status

    def started(new_id: int, epochs_done: int) -> None:
        nonlocal run_id
        run_id = new_id
        put(Event(task.index, "started", run_id=new_id, epoch=epochs_done, pid=os.getpid()))

    engine = create_db_engine(task.db_url)
    try:
        configure(task.device, task.threads, memory_format=task.memory_format)
        run_claimed(
            task.spec,
            engine,
            task.data_dir,
            task.device,
            task.sweep_id,
            retry_failed=task.retry_failed,
            resume=task.resume,
            on_start=started,
            on_epoch=lambda result: put(Event(task.index, "epoch", run_id=run_id, epoch=result.epoch, test_acc=result.test_acc)),
            on_batch=on_batch,
            memory_format=task.memory_format,
            observe=task.observe,
        )
        return finished("completed")
    except ClaimRefused as refused:
        return finished("skipped", f"claimed elsewhere: {refused}", refused.run_id)
    except RunTakenOver as taken:
        return finished("skipped", str(taken))
    except RunFailed as failure:
        return finished("failed", str(failure), failure.run_id)
    except (RunInterrupted, KeyboardInterrupt) as stop:
        return finished("interrupted", str(stop) or "interrupted")
    except DBAPIError as error:
        return finished("failed", f"cannot use the database {describe(engine.url)}: {first_line(error.orig)}")
    finally:
        engine.dispose()
