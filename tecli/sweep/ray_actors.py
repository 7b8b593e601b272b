"""The Ray actors of a sweep on a cluster (tecli.sweep.ray_cluster drives them).

- Runner: a worker process that trains runs one after another (imports and kernels load
  once), each scheduled with its CPU threads and GPU share. Ray restarts one whose
  process died and retries its call, which resumes the run from its checkpoint.
- Channel: one per sweep, owned by its driver: the runners' events to the driver, and
  the driver's stop to the runners. A runner that loses it (the driver is gone) stops
  its run as interrupted.
- WarmPool: with --keep-warm, a detached actor, one per version of tecli's code, that
  owns the runners between sweeps: the next sweep of the same shape (threads, GPUs)
  within the keep-warm time trains in them at once, with nothing to start or import.
  Idle runners hold their CPUs, which is why this is asked for, not the default.

A stop reaches a run as KeyboardInterrupt in the runner's main thread (SIGINT, held by
tecli.stopping until a database write is done), and the run records itself interrupted.
"""

from __future__ import annotations

import os
import sys
import threading
import time

RETRIES = 3  # times Ray restarts a runner whose process died, and retries its call
STOP_POLL = 0.5  # seconds between a running run's looks at its sweep's stop
LEASE = 120.0  # seconds a warm runner stays lent to a driver that has stopped renewing it (it renews every 10 s)
EMPTY_END = 10.0  # seconds a warm pool with no runners stays for a driver that is about to take some
POOL_NAMESPACE = "tecli"


class Channel:
    """A sweep's events (runners put, the driver drains) and its stop flag."""

    def __init__(self):
        self.events: list = []
        self.stop_raised = False

    def put(self, event) -> None:
        self.events.append(event)

    def drain(self) -> list:
        events, self.events = self.events, []
        return events

    def stop(self) -> None:
        self.stop_raised = True

    def stopped(self) -> bool:
        return self.stop_raised


def new_runner(threads: int, gpus: float):
    """A Runner actor that holds `threads` CPUs and `gpus` GPUs, owned by the caller."""
    import ray

    return ray.remote(Runner).options(num_cpus=threads, num_gpus=gpus, max_restarts=RETRIES, max_task_retries=RETRIES).remote()


class Runner:
    def ready(self) -> int:
        """Answers once the runner has started: its process id."""
        return os.getpid()

    def train(self, task, channel) -> str:
        """Train one run, its events put on `channel` (without waiting on each), until done or
        stopped; returns once the channel holds them all.

        The stop arrives as SIGINT, which the call takes for its span: the workers of a
        cluster started with SIGINT ignored (from a batch script or a background job: Ray's
        processes inherit it) would drop it. Its handler raises only while the run is not
        done, so a stop that comes as the run ends cannot escape into the next run of this
        (warm) runner."""
        import signal

        import ray

        from tecli.sweep.executors import train_task

        done = threading.Event()
        lock = threading.Lock()

        def on_sigint(signum, frame) -> None:
            if not done.is_set():
                raise KeyboardInterrupt

        main = threading.current_thread() is threading.main_thread()  # (signal handlers: the main thread only)
        previous = signal.signal(signal.SIGINT, on_sigint) if main else None
        threading.Thread(target=_watch, args=(channel, done, lock), daemon=True, name="tecli stop watch").start()
        puts = []

        def put(event) -> None:
            puts.append(channel.put.remote(event))

        try:
            return train_task(task, put)
        finally:
            with lock:  # the watch interrupts no more
                done.set()
            if previous is not None:  # (None: a handler set outside Python, which cannot be put back)
                signal.signal(signal.SIGINT, previous)
            try:
                ray.get(puts[-1:])  # in order: the last put done, all are
            except ray.exceptions.RayError:
                pass  # the driver is gone, and no one reads them


def _watch(channel, done: threading.Event, lock: threading.Lock) -> None:
    """In a run's thread: interrupt the main thread (as SIGINT) once the sweep is stopped or
    its driver is gone (a warm runner outlives it), unless the run is `done` first."""
    import _thread

    import ray

    while not done.wait(STOP_POLL):
        try:
            stop = ray.get(channel.stopped.remote())
        except ray.exceptions.RayError:
            stop = True
        if stop:
            with lock:
                if not done.is_set():
                    _thread.interrupt_main()
            return


def pool_name(code_version: str) -> str:
    """Runners kept warm by another version of tecli's code would train with that code."""
    return f"tecli-warm-pool-{code_version}"


class WarmPool:
    """Runners between sweeps, by shape (threads, GPUs). A runner idle for its keep-warm
    time is ended; so is the pool once it has had none for EMPTY_END seconds. A runner
    lent to a driver that stops renewing its lease (the driver died) comes back after
    LEASE seconds. (Actor handles compare and hash by their actor.)"""

    def __init__(self):
        self.lock = threading.Lock()
        self.idle: dict = {}  # runner -> (shape, end of its keep-warm time)
        self.lent: dict = {}  # runner -> (shape, keep_warm, end of its lease)
        self.empty_since = time.monotonic()
        threading.Thread(target=self._expire, daemon=True, name="tecli warm pool").start()

    def take(self, shape: tuple, count: int, keep_warm: float) -> list:
        """`count` runners of `shape`, warm ones first. The idle runners left are ended: they
        hold CPUs that this sweep, or another job, may need."""
        with self.lock:
            taken = [runner for runner, (their_shape, _) in self.idle.items() if their_shape == shape][:count]
            for runner in taken:
                del self.idle[runner]
            self._end_idle()
            taken += [new_runner(*shape) for _ in range(count - len(taken))]
            for runner in taken:
                self.lent[runner] = (shape, keep_warm, time.monotonic() + LEASE)
            return taken

    def end_idle(self) -> int:
        """End the idle runners now (those lent to sweeps go on); how many there were."""
        with self.lock:
            return self._end_idle()

    def _end_idle(self) -> int:
        import ray

        ended = len(self.idle)
        for runner in self.idle:
            ray.kill(runner, no_restart=True)
        self.idle.clear()
        return ended

    def renew(self, runners: list) -> None:
        with self.lock:
            for runner in runners:
                if runner in self.lent:
                    self.lent[runner] = (*self.lent[runner][:2], time.monotonic() + LEASE)

    def give_back(self, runners: list) -> None:
        with self.lock:
            for runner in runners:
                if (lent := self.lent.pop(runner, None)) is not None:
                    shape, keep_warm, _ = lent
                    self.idle[runner] = (shape, time.monotonic() + keep_warm)

    def _expire(self) -> None:
        while True:
            time.sleep(1.0)
            try:
                if self._expired():
                    return
            except Exception as error:  # (a GCS hiccup): the next second tries again; the pool must not outlive its runners
                print(f"tecli warm pool: {error!r}", file=sys.stderr)

    def _expired(self) -> bool:
        """End the runners whose keep-warm time is out; True once the pool has ended itself."""
        import ray

        with self.lock:
            now = time.monotonic()
            for runner, (shape, keep_warm, lease_end) in list(self.lent.items()):
                if lease_end < now:
                    del self.lent[runner]
                    self.idle[runner] = (shape, now + keep_warm)
            for runner, (_, end) in list(self.idle.items()):
                if end < now:
                    ray.kill(runner, no_restart=True)
                    del self.idle[runner]
            if self.idle or self.lent:
                self.empty_since = now
            elif now - self.empty_since > EMPTY_END:
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return True
        return False
