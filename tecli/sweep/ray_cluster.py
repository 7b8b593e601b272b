"""RayCluster: a sweep's runs as Ray tasks, each scheduled with the CPU threads (and,
with --device cuda, the share of a GPU) it needs, anywhere on the cluster.

The database stays the single source of truth: a task claims its run key there
(so any number of drivers train each key once) and records epochs and checkpoints
as a local run does. Ray reuses its worker processes from task to task, so imports
and kernels load once per worker. A worker that dies is replaced by Ray and the task
retried; the retry finds the run's process gone, and resumes the run from its
checkpoint. Stopping the driver (Ctrl-C, SIGTERM) stops the tasks: it raises a stop
flag that each task watches from a thread, and cancels them through Ray; either way
the task's main thread gets KeyboardInterrupt (as SIGINT, held by tecli.stopping
until a database write is done), and its run records itself interrupted. Ray's cancel
alone proved unreliable: in loaded CI runs some tasks never got it and trained on.

tecli must be installed on every node, the database reachable from every node, and
the data folder present on every node (or on a shared filesystem).
"""

from __future__ import annotations

import math
import os
import random
import socket
import time
from collections.abc import Callable, Sequence

from tecli.errors import UserError, first_line, shown
from tecli.sweep.executors import Event, ExecutorLost, Task

RETRIES = 3  # times a task is retried after its worker process died
STOP_GRACE = 60.0  # seconds cancelled runs get to record themselves interrupted
CONNECT_TIMEOUT = 5.0
STOP_POLL = 0.5  # seconds between a task's looks at the stop flag


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'tecli[ray]'") from None
    return ray


class RayCluster:
    def __init__(
        self, address: str | None = None, gpus_per_run: float | None = None, device: str = "cpu", max_running: int | None = None
    ):
        self.ray = _import_ray()
        if device not in ("cpu", "cuda"):
            raise UserError(f"--device must be cpu or cuda with --executor ray (Ray picks the GPU), got {shown(device)!r}")
        if gpus_per_run is not None:
            if device != "cuda":
                raise UserError("--gpus-per-run needs --device cuda")
            if not (0 < gpus_per_run <= 1 or (1 < gpus_per_run < math.inf and gpus_per_run == int(gpus_per_run))):
                raise UserError(f"--gpus-per-run must be a fraction in (0, 1] or a whole number, got {gpus_per_run:g}")
        self.address = address
        self.gpus = gpus_per_run if gpus_per_run is not None else (1.0 if device == "cuda" else 0.0)
        self.max_running = max_running

    def start(self) -> None:
        """Join the cluster at `address` ($RAY_ADDRESS if None; a new one on this machine if neither)."""
        ray = self.ray
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        _check_reachable(self.address or os.environ.get("RAY_ADDRESS"))
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        except Exception as error:  # ConnectionError, ValueError, RuntimeError, depending on what is wrong
            where = self.address or os.environ.get("RAY_ADDRESS") or "this machine"
            raise UserError(
                f"cannot join the Ray cluster at {where}: {first_line(error)}; start it with `ray start --head`, or check --address"
            ) from None
        if self.gpus and ray.cluster_resources().get("GPU", 0) < self.gpus:
            raise UserError(
                f"--device cuda asks for {self.gpus:g} GPU per run, but the Ray cluster has "
                f"{ray.cluster_resources().get('GPU', 0):g}; lower --gpus-per-run, or add GPU nodes"
            )

    def default_threads(self) -> int:
        return 1

    def describe(self) -> str:
        resources = self.ray.cluster_resources()
        gpus = f", {resources.get('GPU', 0):g} GPU(s), {self.gpus:g} per run" if self.gpus else ""
        cap = f", at most {self.max_running} at once" if self.max_running else ""
        return f"Ray cluster of {len(self.ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs{gpus}{cap}"

    def check(self, threads: int, url) -> None:
        """A run no node can hold would wait forever; a SQLite file would be a different
        file on each machine."""
        nodes = [node for node in self.ray.nodes() if node["Alive"]]
        largest = max((node["Resources"].get("CPU", 0) for node in nodes), default=0)
        if threads > largest:
            raise UserError(f"--threads {threads} is more CPUs than any node of the Ray cluster has ({largest:g})")
        machines = {node["NodeManagerAddress"] for node in nodes}
        if url.get_backend_name() == "sqlite" and len(machines) > 1:
            raise UserError(
                f"a SQLite database cannot be shared by the {len(machines)} machines of this Ray cluster; "
                "use --db postgresql+psycopg://USER@HOST/DB, reachable from every node"
            )

    def capacity(self, threads: int) -> int:
        """How many runs of `threads` CPU threads (and this GPU share) the alive nodes hold at
        once, counted as Ray counts, in units of 1/10000 (1.0 // 0.2 would be 4.0, not 5)."""

        def units(amount: float) -> int:
            return round(amount * 10_000)

        total = 0
        for node in self.ray.nodes():
            if node["Alive"]:
                fits = units(node["Resources"].get("CPU", 0)) // units(threads)
                if self.gpus:
                    fits = min(fits, units(node["Resources"].get("GPU", 0)) // units(self.gpus))
                total += fits
        return max(1, total)

    def run(self, tasks: Sequence[Task], report: Callable[[Event], None]) -> None:
        _Sweep(self, tasks, report).loop()


def _check_reachable(address: str | None) -> None:
    """Ray retries an unreachable head for minutes, printing as it goes; a HOST:PORT that
    takes no connection is refused here at once."""
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address must be HOST:PORT of a Ray head (e.g. 10.0.0.1:6379) or auto, got {shown(address)!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as error:
        raise UserError(
            f"no Ray cluster answers at {address} ({error.strerror or error}); start one with "
            "`ray start --head --port PORT` there, or check --address"
        ) from None


class _StopFlag:
    """A Ray actor the driver raises to stop its tasks."""

    def __init__(self):
        self.raised = False

    def set(self) -> None:
        self.raised = True

    def is_set(self) -> bool:
        return self.raised


def _watch(stop_flag, done) -> None:
    """In a task's thread: interrupt the main thread (as SIGINT) once the driver raises
    `stop_flag`, unless the task is `done` first or the driver is gone."""
    import _thread

    import ray

    while not done.wait(STOP_POLL):
        try:
            raised = ray.get(stop_flag.is_set.remote())
        except ray.exceptions.RayError:
            return  # the driver and its actors are gone: Ray ends this job's tasks
        if raised and not done.is_set():
            _thread.interrupt_main()
            return


def _train(task: Task, events, stop_flag) -> str:
    """A Ray task: one run, its events sent to the driver's queue, stopped by its flag.

    The stop arrives as SIGINT (from the flag's thread, or Ray's cancel). The workers of a
    cluster started with SIGINT ignored (from a batch script or a background job: Ray's
    processes inherit it) would drop it and train to the end, so the task takes SIGINT
    for its span."""
    import signal
    import threading

    from tecli.sweep.executors import train_task

    main = threading.current_thread() is threading.main_thread()  # (signal handlers: the main thread only)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
    done = threading.Event()
    threading.Thread(target=_watch, args=(stop_flag, done), daemon=True, name="tecli stop watch").start()
    try:
        return train_task(task, events.put)
    finally:
        done.set()
        if previous is not None:  # (None: a handler set outside Python, which cannot be put back)
            signal.signal(signal.SIGINT, previous)


class _Sweep:
    """One call of RayCluster.run: tasks submitted (up to the cap), events read, stops handled."""

    def __init__(self, cluster: RayCluster, tasks: Sequence[Task], report: Callable[[Event], None]):
        from ray.util.queue import Queue

        self.ray = cluster.ray
        self.cluster = cluster
        self.report = report
        self.events = Queue(actor_options={"num_cpus": 0})
        self.stop_flag = self.ray.remote(num_cpus=0)(_StopFlag).remote()
        self.remote = self.ray.remote(_train)
        self.waiting = random.Random().sample(list(tasks), len(tasks))
        self.running: dict = {}  # object ref -> Task
        self.finished: set[int] = set()
        self.started: dict[int, Event] = {}
        self.engines: dict = {}

    def engine(self, task: Task):
        from tecli.db.store import create_db_engine

        if task.db_url not in self.engines:
            self.engines[task.db_url] = create_db_engine(task.db_url)
        return self.engines[task.db_url]

    def loop(self) -> None:
        try:
            while self.waiting or self.running:
                self.submit()
                self.read(0.2)
                self.collect()
        except self.ray.exceptions.RayError as error:  # the cluster, not a task (collect reads those)
            self.stop()
            raise ExecutorLost(f"lost the Ray cluster: {first_line(error)}") from None
        except BaseException:  # Ctrl-C, SIGTERM, or the database failing in this process
            self.stop()
            raise
        finally:
            self.ray.kill(self.events.actor)
            self.ray.kill(self.stop_flag)
            for engine in self.engines.values():
                engine.dispose()

    def submit(self) -> None:
        from tecli.db.recording import key_taken

        # By default no more tasks than the alive nodes hold at once (looked up each time:
        # nodes come and go): with tasks queued beyond that, Ray started worker processes
        # for them beside the busy ones, each importing torch on the cores the runs train
        # on, and handed later runs to those cold workers (measured: 4 processes for 2
        # slots, epochs 1.4x slower). `max_running` (--workers) replaces that count: more
        # than the nodes hold queues the rest in Ray, where an autoscaler sees the demand.
        if not self.waiting:
            return
        # With the cap at what the cluster holds, a task that said it finished holds its slot
        # only until it returns: the next one is sent now and waits in Ray for that task's
        # resources, then runs on the worker it frees (measured: 0.03-0.05 s between runs,
        # against up to a 0.2 s read per run). Under --workers, Ray may have CPUs free, and
        # the next one would start a cold worker beside the finishing one: it waits.
        cap = self.cluster.max_running or self.cluster.capacity(self.waiting[0].threads)
        early = self.cluster.max_running is None
        busy = sum(not (early and task.index in self.finished) for task in self.running.values())
        while self.waiting and busy < cap:
            task = self.waiting.pop(0)
            if key_taken(self.engine(task), task.spec.run_key()):  # spare the cluster the claim
                self.report(Event(task.index, "finished", status="skipped", message="claimed elsewhere"))
                continue
            options = {"num_cpus": task.threads, "num_gpus": self.cluster.gpus, "max_retries": RETRIES}
            ref = self.remote.options(**options, name=f"tecli {task.spec.dataset}/{task.spec.variant}/{task.spec.seed}").remote(
                task, self.events, self.stop_flag
            )
            self.running[ref] = task
            busy += 1

    def read(self, timeout: float) -> None:
        from ray.util.queue import Empty

        try:
            event = self.events.get(timeout=timeout)
            while True:
                self.handle(event)
                event = self.events.get_nowait()
        except Empty:
            pass

    def handle(self, event: Event) -> None:
        if event.index in self.finished:
            return
        if event.kind == "started":
            self.started[event.index] = event
        if event.kind == "finished":
            self.finished.add(event.index)
        self.report(event)

    def collect(self) -> None:
        """Tasks that returned: their last events are in the queue (puts are synchronous);
        one that raised after its retries never said it finished, and is reported failed."""
        if not self.running:
            return
        done, _ = self.ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
        if done:
            self.read(0)
        for ref in done:
            task = self.running.pop(ref)
            try:
                self.ray.get(ref)
            except Exception as error:
                if task.index not in self.finished:
                    self.lost(task, f"Ray task failed: {first_line(error)}")

    def lost(self, task: Task, message: str, status: str = "failed") -> None:
        from tecli.db.recording import end_running
        from tecli.db.schema import RunStatus

        started = self.started.get(task.index)
        if started is not None and started.pid is not None:
            end_running(self.engine(task), started.run_id, started.pid, RunStatus(status), message)  # on this host only
        self.finished.add(task.index)
        self.report(Event(task.index, "finished", run_id=started.run_id if started else None, status=status, message=message))

    def stop(self) -> None:
        """Stop every task (its flag, and Ray's cancel); running ones get KeyboardInterrupt and
        record themselves interrupted."""
        try:
            self.ray.get(self.stop_flag.set.remote(), timeout=CONNECT_TIMEOUT)
        except self.ray.exceptions.RayError:
            pass  # the cluster is failing: cancel is all there is
        for ref in self.running:
            self.ray.cancel(ref)
        deadline = time.monotonic() + STOP_GRACE
        while self.running and time.monotonic() < deadline:
            try:
                self.read(0.2)
                done, _ = self.ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
                for ref in done:
                    del self.running[ref]
            except Exception:
                break  # reporting may fail with the database; stopping must not
        try:
            self.read(0)
        except Exception:
            pass
        for ref in self.running:
            self.ray.cancel(ref, force=True)
