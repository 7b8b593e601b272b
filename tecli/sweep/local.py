"""LocalPool: a sweep's runs on this machine, in a pool of long-lived worker processes.

A worker imports torch and tecli and loads its kernels once, then trains run after
run; that start-up (seconds) is paid once per worker, not once per run. What a
process per run gave is kept: a worker that dies (segfault, OOM kill) or stalls
(no batch, epoch or message for `stall_timeout` seconds once it has taken its task
up; it is killed) has its run recorded failed
and is replaced by a fresh process. `runs_per_process` retires a worker after that
many runs (1 gives the old process-per-run behaviour).

Start method: on Linux, CPU sweeps fork their workers from the sweep process after
it has imported what runs need (torch, tecli, the data readers of the sweep's data
sets): a worker starts in milliseconds instead of importing for seconds, and the
imports are paid once per sweep, not once per worker. The sweep process has run no
torch or numba computation when it forks (a forked child could not use their thread
pools), and each worker loads the TE kernels itself. CUDA sweeps, and other systems,
spawn fresh interpreters: CUDA cannot be used in a child forked from a process that
has touched it.

Workers ignore Ctrl-C; the parent coordinates a stop: it sends SIGTERM to the busy
workers, whose runs record themselves interrupted (tecli.stopping), then ends every
worker. A run whose worker ended without a word is marked by the parent. Workers die
with the parent (SIGTERM on Linux) if the sweep itself is killed.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tecli.db.schema import RunStatus
from tecli.sweep.executors import Event, Task, train_task

STALL_TIMEOUT = 900.0  # seconds without a batch, an epoch or a message: the worker is hung
STOP_GRACE = 60.0  # seconds a stopped run gets to record itself interrupted


@dataclass
class _Worker:
    process: multiprocessing.Process
    tasks: object  # the parent's end of the worker's task pipe
    task: Task | None = None  # the task it trains now; None: idle
    run_id: int | None = None
    pid_of_run: int | None = None
    heard: float | None = None  # when it last said something about its task; None: not taken up yet
    runs: int = 0


class LocalPool:
    """At most `workers` runs at a time, each worker process reused from run to run."""

    def __init__(
        self,
        workers: int,
        *,
        runs_per_process: int | None = None,
        stall_timeout: float = STALL_TIMEOUT,
        start_method: str | None = None,
    ):
        self.workers = workers
        self.runs_per_process = runs_per_process
        self.stall_timeout = stall_timeout
        self.start_method = start_method  # fork | spawn; None: fork for CPU sweeps on Linux, else spawn

    def start(self) -> None:
        pass  # workers start when there is a task for them

    def check(self, threads: int, url) -> None:
        pass  # tecli.runner.configure has checked the threads against this machine

    def default_threads(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.workers)

    def describe(self) -> str:
        return f"{self.workers} local worker(s)"

    def run(self, tasks: Sequence[Task], report: Callable[[Event], None]) -> None:
        _Run(self, tasks, report).loop()


class _Run:
    """One call of LocalPool.run: its workers, the tasks left, the events read."""

    def __init__(self, pool: LocalPool, tasks: Sequence[Task], report: Callable[[Event], None]):
        self.pool = pool
        self.report = report
        self.context = multiprocessing.get_context(pool.start_method or _start_method(tasks))
        self.datasets = {task.spec.dataset for task in tasks}
        self.forked = self.context.get_start_method() == "fork"
        if self.forked:  # the workers inherit the imports and the loaded kernels
            _preload(self.datasets)
            _warm_up()
        self.events = self.context.Queue()
        # A random order: sweeps sharing a grid then rarely start the same run at once.
        self.waiting = random.Random().sample(list(tasks), len(tasks))
        self.workers: list[_Worker] = []
        self.engines: dict = {}

    def loop(self) -> None:
        try:
            while self.waiting or any(w.task for w in self.workers):
                self.assign()
                self.read(0.2)
                self.check_workers()
        except BaseException:  # Ctrl-C, SIGTERM, or the database failing in this process
            self.stop()
            raise
        finally:
            self.close()

    def engine(self, task: Task):
        from tecli.db.store import create_db_engine

        if task.db_url not in self.engines:
            self.engines[task.db_url] = create_db_engine(task.db_url)
        return self.engines[task.db_url]

    def assign(self) -> None:
        from tecli.db.recording import key_taken

        while self.waiting:
            idle = next((w for w in self.workers if w.task is None and w.process.exitcode is None), None)
            if idle is None and len(self.workers) >= self.pool.workers:
                return
            task = self.waiting.pop(0)
            if key_taken(self.engine(task), task.spec.run_key()):  # spare a worker the claim
                self.report(Event(task.index, "finished", status="skipped", message="claimed elsewhere"))
                continue
            worker = idle or self.start_worker()
            try:
                worker.tasks.send(task)
            except OSError:  # it died while idle
                self.waiting.insert(0, task)
                self.retire(worker)
                continue
            worker.task, worker.run_id, worker.pid_of_run, worker.heard = task, None, None, None

    def start_worker(self) -> _Worker:
        ours, theirs = self.context.Pipe(duplex=False)
        ping = min(2.0, self.pool.stall_timeout / 4)
        datasets = None if self.forked else self.datasets  # what a spawned worker must import itself
        process = self.context.Process(target=_serve, args=(ours, self.events, os.getpid(), ping, datasets), daemon=False)
        # A worker still starting never sees Ctrl-C, and takes a SIGTERM only once it has
        # set its own handler (a forked one inherits this process's handlers).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            signal.signal(signal.SIGINT, previous)
        ours.close()
        worker = _Worker(process, theirs)
        self.workers.append(worker)
        return worker

    def read(self, timeout: float) -> None:
        """Handle every message waiting, the first within `timeout` seconds."""
        try:
            pid, event = self.events.get(timeout=timeout)
            while True:
                self.handle(pid, event)
                pid, event = self.events.get_nowait()
        except queue.Empty:
            pass

    def handle(self, pid: int, event: Event | None) -> None:
        worker = next((w for w in self.workers if w.process.pid == pid), None)
        if worker is None or worker.task is None or (event is not None and event.index != worker.task.index):
            return  # a late word from a worker already written off
        worker.heard = time.monotonic()
        if event is None:  # a sign of life: a batch trained
            return
        if event.kind == "started":
            worker.run_id, worker.pid_of_run = event.run_id, event.pid
        self.report(event)
        if event.kind == "finished":
            worker.task = None
            worker.runs += 1
            if self.pool.runs_per_process and worker.runs >= self.pool.runs_per_process:
                self.retire(worker)

    def check_workers(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.task is None:
                if worker.process.exitcode is not None:
                    self.retire(worker)  # died while idle; nothing to record
                continue
            if worker.process.exitcode is not None:
                self.read(0.5)  # its last words may still be in the pipe
                if worker.task is not None:
                    self.written_off(worker, f"worker died (exit code {worker.process.exitcode})")
            elif worker.heard is not None and now - worker.heard > self.pool.stall_timeout:
                worker.process.kill()
                worker.process.join()
                self.written_off(worker, f"worker made no progress for {self.pool.stall_timeout:g} s and was killed")

    def written_off(self, worker: _Worker, message: str) -> None:
        """A worker that died or hung: its run failed, and the worker is gone (replaced on demand)."""
        self.end_run(worker, RunStatus.FAILED, message)
        self.report(Event(worker.task.index, "finished", run_id=worker.run_id, status="failed", message=message))
        worker.task = None
        self.retire(worker)

    def end_run(self, worker: _Worker, status: RunStatus, message: str) -> None:
        from tecli.db.recording import end_running

        if worker.run_id is not None:
            end_running(self.engine(worker.task), worker.run_id, worker.pid_of_run or worker.process.pid, status, message)

    def retire(self, worker: _Worker) -> None:
        try:
            worker.tasks.send(None)  # finish and exit
        except OSError:
            pass  # already gone
        worker.tasks.close()
        self.workers.remove(worker)
        worker.process.join(timeout=0)

    def stop(self) -> None:
        """Stop the busy workers' runs (they record themselves interrupted) and wait for them."""
        busy = [w for w in self.workers if w.task is not None and w.process.exitcode is None]
        for worker in busy:
            worker.process.terminate()  # SIGTERM: the run records itself interrupted
        deadline = time.monotonic() + STOP_GRACE
        while any(w.task is not None and w.process.exitcode is None for w in busy) and time.monotonic() < deadline:
            try:
                self.read(0.2)  # keep reading while they stop: a full pipe would block them
            except Exception:
                pass  # reporting may fail with the database; stopping the workers must not
        for worker in busy:
            if worker.task is not None:  # ended, or still stuck, without saying so
                try:
                    self.end_run(worker, RunStatus.INTERRUPTED, "worker stopped with the sweep")
                except Exception:
                    pass  # left `running`: the next command to open the database marks it

    def close(self) -> None:
        for worker in self.workers:
            if worker.process.exitcode is None:
                worker.process.kill() if worker.task is not None else worker.process.terminate()
        for worker in self.workers:
            worker.process.join()
        self.events.close()
        for engine in self.engines.values():
            engine.dispose()


def _die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGTERM when the sweep process dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def _start_method(tasks: Sequence[Task]) -> str:
    on_cpu = all(task.device == "cpu" for task in tasks)
    return "fork" if sys.platform == "linux" and on_cpu else "spawn"


def _preload(datasets: set[str]) -> None:
    """The imports a run needs, its data sets' readers included (scikit-learn, about 2 s,
    only for digits): in the sweep process before it forks, else in each worker."""
    import h5py  # noqa: F401
    import torch  # noqa: F401

    import tecli.checkpoint  # noqa: F401
    import tecli.db.recording  # noqa: F401
    import tecli.runner  # noqa: F401
    import tecli.te.window  # noqa: F401
    import tecli.train  # noqa: F401

    if "digits" in datasets:
        import sklearn.datasets  # noqa: F401


def _warm_up() -> None:
    """Load the TE engine's compiled kernels (numba's on-disk cache: a fraction of a
    second) once per worker rather than inside its first run, or once in the sweep
    process before it forks: they are serial kernels, which start no thread."""
    import numpy as np

    from tecli.te.window import SlidingPairTE

    window = SlidingPairTE(2, 2, [(0, 0), (1, 1)], window_blocks=1)
    window.push(np.zeros((2, 8), bool), np.zeros((2, 8), bool))
    window.te()


def _serve(tasks, events, parent_pid: int, ping: float, datasets: set[str] | None) -> None:
    """A worker: train the tasks the parent sends, until it sends None or goes away. It
    says it took a task, then gives a sign of life at most every `ping` seconds.
    `datasets`: those it must import the readers of (spawned); None if forked warm."""
    import gc

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent coordinates Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # between runs SIGTERM ends the worker
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    _die_with_parent(parent_pid)
    pid = os.getpid()
    if datasets is not None:  # spawned: nothing inherited
        _preload(datasets)
        _warm_up()
    # What is loaded now stays for the worker's life: out of the collections, the one after
    # each run scans only that run's objects (about 9 ms instead of 60-90 ms with torch).
    gc.freeze()
    while os.getppid() == parent_pid:  # else the sweep died while this worker trained: nothing will come
        try:
            task = tasks.recv()
        except EOFError:
            break
        if task is None:
            break
        events.put((pid, None))  # taken up: the stall clock starts
        last = time.monotonic()

        def alive(done: int, total: int) -> None:
            nonlocal last
            if time.monotonic() - last > ping:
                last = time.monotonic()
                events.put((pid, None))

        train_task(task, lambda event: events.put((pid, event)), alive)
        gc.collect()
    if os.getppid() != parent_pid:
        # Nobody reads the events any more, and a worker killed while writing may hold the
        # queue's lock: flushing could block this process forever.
        events.cancel_join_thread()
    events.close()
    events.join_thread()
