"""A sweep as a library call: plan it (file validated, database opened, resume rules
applied), then run what is left on an executor. `tecli sweep` parses its options, calls
these two and prints; a Python user calls them directly:

    from tecli.sweep.run import plan_sweep, run_sweep

    sweep = plan_sweep("experiments.toml", db="tecli.db")
    result = run_sweep(sweep, workers=2)  # or executor=RayCluster(address="auto")
    print(result.counts())
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError

from tecli.errors import UserError
from tecli.sweep.executors import Event, Executor, ExecutorLost, Task
from tecli.sweep.local import STALL_TIMEOUT, LocalPool
from tecli.sweep.file import SweepSpec
from tecli.sweep.plan import PlannedRun

TO_TRAIN = ("to run", "resume")


class SweepAborted(Exception):
    """The database or the cluster failed in the middle of a sweep; its workers were stopped."""


@dataclass
class SweepPlan:
    """A validated sweep against its database: what is done and what is left."""

    spec: SweepSpec
    url: URL
    engine: Engine
    planned: list[PlannedRun]
    device: str
    threads: int | None
    retry_failed: bool
    restart: bool
    memory_format: str = "channels_last"

    @property
    def to_run(self) -> list[PlannedRun]:
        return [p for p in self.planned if p.state in TO_TRAIN]


@dataclass
class SweepResult:
    outcomes: dict[int, Event] = field(default_factory=dict)  # index in to_run -> its finished event
    interrupted: bool = False  # Ctrl-C or SIGTERM stopped it; the same call resumes

    def counts(self) -> Counter:
        """completed / failed / interrupted / skipped (claimed elsewhere) among the runs it started."""
        return Counter(event.status for event in self.outcomes.values())


def plan_sweep(
    file: str | os.PathLike,
    db: str | os.PathLike | None = None,
    *,
    retry_failed: bool = False,
    restart: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    trains_here: bool = True,
    executor: Executor | None = None,
    memory_format: str = "channels_last",
    overrides: Sequence[str] = (),
) -> SweepPlan:
    """Validate the file with its `overrides` ("KEY.PATH=VALUE", as --set) and the settings
    (UserError, before anything is written), open or create the database, and plan the
    grid. trains_here=False (a cluster trains): the device is not looked for on this machine.
    An `executor` given is started and checked against the settings first (a cluster that
    cannot be reached or cannot hold a run)."""
    from tecli.db.liveness import Lease
    from tecli.db.store import database_url, open_database
    from tecli.runner import check_settings
    from tecli.sweep.file import load_sweep
    from tecli.sweep.plan import plan

    spec = load_sweep(Path(file), overrides)
    url = database_url(db)
    Lease.from_env()
    check_settings(device, threads, here=trains_here, memory_format=memory_format)  # before anything is recorded
    if executor is not None:
        executor.start()
        executor.check(threads or executor.default_threads(), url)
    engine = open_database(url)
    planned = plan(engine, spec, retry_failed, resume=not restart)
    return SweepPlan(spec, url, engine, planned, device, threads, retry_failed, restart, memory_format)


def make_executor(
    kind: str = "local", *, workers: int | None = None, address: str | None = None, gpus_per_run: float | None = None,
    device: str = "cpu",
    stall_timeout: float | None = None,
    keep_warm: float | None = None,
) -> Executor:
    """The executor `tecli sweep` options name, checked (UserError) but not yet started.
    local: `workers` (default 1) warm processes here, a run with no progress for
    `stall_timeout` seconds failed. ray: runs spread over a Ray cluster by the resources
    they need, at most `workers` at a time if given, its runners kept for the next sweep
    `keep_warm` seconds after this one (default 0: ended with it)."""
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if kind == "local":
        if address is not None or gpus_per_run is not None or keep_warm is not None:
            raise UserError("--address, --gpus-per-run and --keep-warm are for --executor ray; leave them out, or add --executor ray")
        if stall_timeout is not None and not stall_timeout > 0:
            raise UserError(f"--stall-timeout must be > 0 seconds, got {stall_timeout:g}")
        return LocalPool(workers or 1, stall_timeout=stall_timeout or STALL_TIMEOUT)
    if kind == "ray":
        from tecli.sweep.ray_cluster import RayCluster

        if stall_timeout is not None:
            raise UserError("--stall-timeout is for the local executor; Ray watches its own workers")
        return RayCluster(address=address, gpus_per_run=gpus_per_run, device=device, max_running=workers, keep_warm=keep_warm or 0.0)
    raise UserError(f"--executor must be local or ray, got {kind!r}")


def run_sweep(
    sweep: SweepPlan,
    *,
    workers: int = 1,
    executor: Executor | None = None,
    data_dir: str | os.PathLike | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> SweepResult:
    """Train what the plan left on `executor` (default: a pool of `workers` processes here,
    each run with cores / workers CPU threads unless the plan sets threads). Ctrl-C or
    SIGTERM stops it cleanly (the running runs record themselves interrupted);
    SweepAborted if the database or the cluster fails."""
    from tecli.db.store import describe
    from tecli.errors import first_line
    from tecli.stopping import stop_signals
    from tecli.sweep.plan import register

    executor = executor or make_executor(workers=workers)
    executor.start()
    per_run_threads = sweep.threads or executor.default_threads()
    executor.check(per_run_threads, sweep.url)
    sweep_id = register(sweep.engine, sweep.spec)
    folder = Path(data_dir) if data_dir is not None else None
    tasks = [
        Task(
            i, p.spec, sweep.url, sweep_id, folder, sweep.device, per_run_threads, sweep.retry_failed, not sweep.restart,
            sweep.memory_format, sweep.spec.observe,
        )
        for i, p in enumerate(sweep.to_run)
    ]
    result = SweepResult()

    def report(event: Event) -> None:
        if event.kind == "finished":
            result.outcomes[event.index] = event
        if on_event:
            on_event(event)

    with stop_signals():
        try:
            executor.run(tasks, report)
        except KeyboardInterrupt:
            result.interrupted = True
        except DBAPIError as error:
            raise SweepAborted(f"cannot use the database {describe(sweep.url)}: {first_line(error.orig)}") from None
        except ExecutorLost as error:
            raise SweepAborted(str(error)) from None
    return result
