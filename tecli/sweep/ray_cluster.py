"""RayCluster: a sweep's runs on a Ray cluster, trained by runner actors (tecli.sweep.ray_actors),
each holding the CPU threads (and, with --device cuda, the share of a GPU) a run needs,
anywhere on the cluster. A runner trains run after run, so imports and kernels load once
per runner; with --keep-warm the runners outlive the sweep, and the next sweep within that
time skips their start (seconds: a worker process, torch, tecli, the TE kernels).

The database stays the single source of truth: a runner claims a run key there
(so any number of drivers train each key once) and records epochs and checkpoints
as a local run does. A runner whose process dies is restarted by Ray and its call
retried; the retry finds the run's process gone, and resumes the run from its
checkpoint. Stopping the driver (Ctrl-C, SIGTERM) raises the sweep's stop, which each
running run watches from a thread: its main thread gets KeyboardInterrupt, and the run
records itself interrupted. (Ray's cancel proved unreliable: in loaded CI runs some
tasks never got it and trained on.)

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
from tecli.sweep.ray_actors import RETRIES, Channel, new_runner

STOP_GRACE = 60.0  # seconds stopped runs get to record themselves interrupted
CONNECT_TIMEOUT = 5.0
HEAD_NODE = "node:__internal_head__"  # the resource Ray gives the head node only
POOL_TRIES = 3  # a warm pool may end itself (empty) just as a driver asks it for runners
RENEW = 10.0  # seconds between a driver's renewals of its lease on warm runners (LEASE: 120)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'tecli[ray]'") from None
    return ray


class RayCluster:
    def __init__(
        self,
        address: str | None = None,
        gpus_per_run: float | None = None,
        device: str = "cpu",
        max_running: int | None = None,
        keep_warm: float = 0.0,
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
        if not 0 <= keep_warm < math.inf:
            raise UserError(f"--keep-warm must be >= 0 seconds, got {keep_warm:g}")
        self.keep_warm = keep_warm

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
        warm = f", runners kept warm {self.keep_warm:g} s" if self.keep_warm else ""
        return f"Ray cluster of {len(self.ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs{gpus}{cap}{warm}"

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

    def warm_pool(self, start: bool):
        """The cluster's WarmPool for this version of tecli's code; one is started if there is
        none and `start`, else None."""
        from tecli.conditions import code_version
        from tecli.sweep.ray_actors import POOL_NAMESPACE, WarmPool, pool_name

        name = pool_name(code_version())
        if start:
            options = {"name": name, "namespace": POOL_NAMESPACE, "lifetime": "detached", "get_if_exists": True}
            # On the head node, whose loss ends the cluster anyway: the runners end with their pool.
            return self.ray.remote(WarmPool).options(num_cpus=0, resources={HEAD_NODE: 0.001}, **options).remote()
        try:
            return self.ray.get_actor(name, namespace=POOL_NAMESPACE)
        except ValueError:
            return None

    def end_idle_warm_runners(self, other_code_only: bool = False) -> int:
        """End the runners kept warm (they hold CPUs) that no sweep uses now, of every version
        of tecli's code, or of the others only; how many there were. Their pools end once
        empty."""
        from tecli.conditions import code_version
        from tecli.sweep.ray_actors import POOL_NAMESPACE, pool_name

        self.start()
        ours = pool_name(code_version())
        ended = 0
        for actor in self.ray.util.list_named_actors(all_namespaces=True):
            name = actor["name"]
            if actor["namespace"] != POOL_NAMESPACE or not name.startswith(pool_name("")) or (other_code_only and name == ours):
                continue
            try:
                ended += self.ray.get(self.ray.get_actor(name, namespace=POOL_NAMESPACE).end_idle.remote(), timeout=CONNECT_TIMEOUT)
            except (ValueError, self.ray.exceptions.RayError):
                pass  # it ended itself meanwhile, or is of code without end_idle
        return ended

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


class _Sweep:
    """One call of RayCluster.run: runners hired (up to the cap), tasks handed to those
    started and free, events read, stops handled."""

    def __init__(self, cluster: RayCluster, tasks: Sequence[Task], report: Callable[[Event], None]):
        self.ray = cluster.ray
        self.cluster = cluster
        self.report = report
        here = self.ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
            self.ray.get_runtime_context().get_node_id(), soft=False
        )  # (the channel: on the driver's node, whose loss ends the sweep anyway)
        self.channel = self.ray.remote(Channel).options(num_cpus=0, scheduling_strategy=here).remote()
        self.runners: dict = {}  # runner -> the warm pool that lent it, or None (this sweep's own)
        self.starting: dict = {}  # object ref of a hired runner's ready call -> the runner
        self.ready: set = set()  # runners that have started (a task handed to one that cannot start would wait forever)
        self.calls: dict = {}  # object ref of a runner's train call -> (its task, the runner)
        self.waiting = random.Random().sample(list(tasks), len(tasks))
        self.finished: set[int] = set()
        self.started: dict[int, Event] = {}
        self.requeued: dict[int, int] = {}  # task index -> times its runner died before the run started
        self.engines: dict = {}
        self.renewed = time.monotonic()

    def engine(self, task: Task):
        from tecli.db.store import create_db_engine

        if task.db_url not in self.engines:
            self.engines[task.db_url] = create_db_engine(task.db_url)
        return self.engines[task.db_url]

    def loop(self) -> None:
        try:
            while self.waiting or self.calls:
                self.dispatch()
                self.wait(0.2)
        except self.ray.exceptions.RayError as error:  # the cluster, not a run (collect reads those)
            self.stop()
            raise ExecutorLost(f"lost the Ray cluster: {first_line(error)}") from None
        except BaseException:  # Ctrl-C, SIGTERM, or the database failing in this process
            self.stop()
            raise
        finally:
            self.release()

    def dispatch(self) -> None:
        """Hand waiting tasks to started, free runners, hiring runners up to the cap first;
        once none is waiting, let the free runners go (their CPUs are of use elsewhere).

        By default the cap is what the alive nodes hold at once (looked up each time: nodes
        come and go); `max_running` (--workers) replaces it: runners beyond what the nodes
        hold wait in Ray, where an autoscaler sees the demand."""
        from tecli.db.recording import key_taken

        busy = {runner for _, runner in self.calls.values()}
        if not self.waiting:
            for runner in [runner for runner in self.runners if runner not in busy]:
                self.let_go(runner)
            return
        cap = self.cluster.max_running or self.cluster.capacity(self.waiting[0].threads)
        wanted = min(cap, len(self.waiting) + len(busy))
        if len(self.runners) < wanted:
            self.hire(wanted - len(self.runners), self.waiting[0].threads)
        for runner in [runner for runner in self.ready if runner not in busy]:
            while self.waiting:
                task = self.waiting.pop(0)
                if key_taken(self.engine(task), task.spec.run_key()):  # spare the cluster the claim
                    self.report(Event(task.index, "finished", status="skipped", message="claimed elsewhere"))
                    continue
                self.calls[runner.train.remote(task, self.channel)] = (task, runner)
                break

    def hire(self, count: int, threads: int) -> None:
        """`count` more runners. From the warm pool where there is one (it starts those it
        lacks; without --keep-warm they end with this sweep): a sweep without --keep-warm
        still uses the runners an earlier sweep kept, which would hold the CPUs it needs."""
        shape = (threads, self.cluster.gpus)
        if not self.runners:  # this sweep's first: runners kept by other code would hold CPUs it needs
            self.cluster.end_idle_warm_runners(other_code_only=True)
        for attempt in range(POOL_TRIES):
            pool = self.cluster.warm_pool(start=self.cluster.keep_warm > 0)
            try:
                hired = [new_runner(*shape) for _ in range(count)] if pool is None else self.ray.get(
                    pool.take.remote(shape, count, self.cluster.keep_warm)
                )
                break
            except self.ray.exceptions.ActorDiedError:  # it ended itself (empty) as we asked
                if attempt == POOL_TRIES - 1:
                    raise
                time.sleep(0.5)
        for runner in hired:
            self.runners[runner] = pool
            self.starting[runner.ready.remote()] = runner

    def wait(self, timeout: float) -> None:
        """Until a call returns, a runner starts or `timeout` passes; then report the events
        and the calls that returned, and renew the warm pool's lease."""
        refs = [*self.calls, *self.starting]
        done = []
        if refs:
            self.ray.wait(refs, num_returns=1, timeout=timeout)
            done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        else:
            time.sleep(timeout)
        for event in self.ray.get(self.channel.drain.remote()):  # a returned call's events are all there
            self.handle(event)
        for ref in done:
            if ref in self.starting:
                self.started_up(ref)
            else:
                self.collect(ref)
        self.renew()

    def started_up(self, ref) -> None:
        runner = self.starting.pop(ref)
        try:
            self.ray.get(ref)
        except self.ray.exceptions.ActorDiedError:  # it could not start, or died since (a warm one)
            self.runners.pop(runner, None)
            return
        self.ready.add(runner)

    def handle(self, event: Event) -> None:
        if event.index in self.finished:
            return
        if event.kind == "started":
            self.started[event.index] = event
        if event.kind == "finished":
            self.finished.add(event.index)
        self.report(event)

    def collect(self, ref) -> None:
        """A returned call: one that raised after its retries never said its run finished,
        which is reported failed; a runner that died for good is let go, and a task it had
        not started goes to another."""
        task, runner = self.calls.pop(ref)
        try:
            self.ray.get(ref)
        except Exception as error:
            if isinstance(error, self.ray.exceptions.ActorDiedError):
                self.runners.pop(runner, None)
                self.ready.discard(runner)
                self.requeued[task.index] = self.requeued.get(task.index, 0) + 1
                if task.index not in self.started and self.requeued[task.index] <= RETRIES:
                    self.waiting.insert(0, task)
                    return
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

    def renew(self) -> None:
        """Keep the warm pools' lease on this sweep's runners (a dead driver's go back)."""
        if time.monotonic() - self.renewed > RENEW:
            for pool, runners in self.lent().items():
                pool.renew.remote(runners)
            self.renewed = time.monotonic()

    def lent(self) -> dict:
        """warm pool -> the runners it lent this sweep"""
        by_pool: dict = {}
        for runner, pool in self.runners.items():
            if pool is not None:
                by_pool.setdefault(pool, []).append(runner)
        return by_pool

    def let_go(self, runner, kill: bool = False):
        """A runner back to its warm pool (the pool's call is returned), or ended (this
        sweep's own, or `kill`)."""
        pool = self.runners.pop(runner)
        self.ready.discard(runner)
        self.starting = {ref: other for ref, other in self.starting.items() if other != runner}
        if pool is None or kill:
            self.ray.kill(runner, no_restart=True)
            return None
        return pool.give_back.remote([runner])

    def stop(self) -> None:
        """Raise the sweep's stop: running runs get KeyboardInterrupt and record themselves
        interrupted. Runners still busy after STOP_GRACE, or at a second Ctrl-C, are ended."""
        try:
            self.ray.get(self.channel.stop.remote(), timeout=CONNECT_TIMEOUT)
        except self.ray.exceptions.RayError:
            pass  # the cluster is failing; runners that lose the channel stop too
        deadline = time.monotonic() + STOP_GRACE
        while self.calls and time.monotonic() < deadline:
            try:
                self.wait(0.2)
            except BaseException:
                break  # reporting may fail with the database, or a second Ctrl-C asks for an end now
        try:
            for _, runner in self.calls.values():
                self.let_go(runner, kill=True)
        except self.ray.exceptions.RayError:
            pass  # the cluster is gone, and its runners with it
        self.calls.clear()

    def release(self) -> None:
        """The runners back to their warm pool, or ended; the channel ended; engines closed."""
        try:
            given_back = [self.let_go(runner) for runner in list(self.runners)]
            self.ray.get([ref for ref in given_back if ref is not None], timeout=CONNECT_TIMEOUT)  # before this process ends
            self.ray.kill(self.channel)
        except self.ray.exceptions.RayError:
            pass  # the cluster is gone; so are they, or the pool's lease brings them back
        finally:
            for engine in self.engines.values():
                engine.dispose()
