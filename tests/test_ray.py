"""`tecli sweep --executor ray` on a real local Ray cluster (the session's `ray_cluster`):
the same epochs as the local executor, a killed worker's run resumed bit for bit, a
stopped driver, two drivers on one file, runners kept warm between sweeps, and the
mistakes that must give one line."""

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sweeps import count, free_port, invoke, running_before, sigterm_when_running, statuses, write

from tecli.db.schema import Epoch, Run
from tecli.db.store import create_db_engine, open_database
from tecli.sweep.file import load_sweep

# Every column of an epoch but its ids and its timings: what training computed.
TIMING = {"id", "run_id", "seconds", "cpu_seconds", "te_seconds", "recorded_at"}
METRICS = [column.name for column in Epoch.__table__.columns if column.name not in TIMING]

KEEP_WARM = 15  # seconds: more than a driver takes to start; the tests wait for the runners to end (the cluster has 2 CPUs)

# Two variants that differ in their names only: one training, bit for bit, under two run keys.
TWINS = """
name = "twins"
seeds = [0]

[defaults]
epochs = {epochs}
lr = 0.05

[defaults.te]
window = 128
lam = 2.0

[datasets.digits]

[variants.te]
te = true

[variants.twin]
te = true
"""


def epoch_rows(db) -> dict[tuple, dict]:
    """(dataset, variant, seed, epoch) -> that epoch's METRICS, over every run in `db`."""
    engine = open_database(db)
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(Run.dataset, Run.variant, Run.seed, *(getattr(Epoch, name) for name in METRICS))
                .select_from(Epoch)
                .join(Run, Run.id == Epoch.run_id)
            ).all()
    finally:
        engine.dispose()
    by_key = {(row.dataset, row.variant, row.seed, row.epoch): dict(zip(METRICS, row[3:])) for row in rows}
    assert len(by_key) == len(rows), "two runs of one key recorded the same epoch"
    return by_key


def ray_command(sweep_file, address, db, *extra) -> list[str]:
    return [sys.executable, "-m", "tecli", "sweep", str(sweep_file), "--executor", "ray", "--address", address,
            "--db", str(db), *map(str, extra)]  # fmt: skip


def completed_keys(db) -> list[str]:
    engine = open_database(db)
    try:
        with Session(engine) as session:
            return sorted(session.scalars(select(Run.run_key).where(Run.status == "completed")))
    finally:
        engine.dispose()


def run_keys(sweep_file) -> list[str]:
    return sorted(spec.run_key() for spec in load_sweep(sweep_file).runs)


def finish(*processes: subprocess.Popen) -> None:
    """Kill what a failed test left running."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture(scope="module")
def local_tiny(tmp_path_factory):
    """The TINY sweep (2 variants x 2 seeds, 2 epochs) by the local executor, one thread per
    run as on Ray: (its file, its epoch rows)."""
    from tecli.sweep.run import plan_sweep, run_sweep

    folder = tmp_path_factory.mktemp("local")
    sweep_file, db = write(folder), folder / "local.db"
    plan = plan_sweep(sweep_file, db, threads=1)
    try:
        assert run_sweep(plan, workers=2).counts() == {"completed": 4}
    finally:
        plan.engine.dispose()
    return sweep_file, epoch_rows(db)


def test_ray_sweep_epoch_rows_equal_the_local_executor_s(db_url, ray_cluster, local_tiny):
    from tecli.sweep.ray_cluster import RayCluster
    from tecli.sweep.run import plan_sweep, run_sweep

    sweep_file, local = local_tiny
    assert len(local) == 8
    assert any(metrics["te_mean"] is not None for metrics in local.values())  # TE statistics compared too
    plan = plan_sweep(sweep_file, db_url, threads=1, trains_here=False)
    events = []
    try:
        result = run_sweep(plan, executor=RayCluster(address=ray_cluster), on_event=events.append)
    finally:
        plan.engine.dispose()
    assert result.counts() == {"completed": 4} and not result.interrupted
    assert [e.kind for e in events].count("epoch") == 8
    running, most = set(), 0  # never more runs at once than the cluster's 2 CPUs hold
    for event in events:
        if event.kind in ("started", "finished"):
            (running.add if event.kind == "started" else running.discard)(event.index)
            most = max(most, len(running))
    assert most == 2

    assert epoch_rows(db_url) == local
    engine = open_database(db_url)
    try:
        with Session(engine) as session:
            runs = session.scalars(select(Run)).all()
            assert sorted((r.variant, r.seed, r.status) for r in runs) == sorted(
                (v, s, "completed") for v in ("baseline", "te") for s in (0, 1)
            )
            assert {(r.device, r.gpu_name, r.threads) for r in runs} == {("cpu", None, 1)}
            assert all(r.pid != os.getpid() for r in runs)  # trained by Ray's workers, not here
            assert len({r.pid for r in runs}) <= 2  # in 2 warm worker processes, run after run
            assert [[(a.status, a.threads) for a in r.attempts] for r in runs] == [[("completed", 1)]] * 4
    finally:
        engine.dispose()


def test_a_killed_ray_worker_s_run_resumes_from_its_checkpoint_bit_identically(tmp_path, ray_cluster):
    """Two runs of one training side by side; the worker of one is killed after its second
    epoch. Ray retries its task, which resumes the run from its checkpoint: its epochs equal
    its twin's, which ran uninterrupted (and the twin's equal the local executor's, as the
    test above shows for every run)."""
    epochs = 15  # an epoch takes about 0.1 s: the run is still training when it is killed
    sweep_file = tmp_path / "twins.toml"
    sweep_file.write_text(TWINS.format(epochs=epochs))
    db = tmp_path / "twins.db"
    sweep = subprocess.Popen(ray_command(sweep_file, ray_cluster, db), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    engine = create_db_engine(db)  # not open_database: the driver creates the schema
    try:
        deadline = time.monotonic() + 120
        done = 0
        while done < 2:
            assert sweep.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.05)
            try:
                with Session(engine) as session:
                    run = session.scalar(select(Run).where(Run.variant == "te"))
                    killed, done = (run.pid, len(run.epochs)) if run is not None else (None, 0)
            except OperationalError:  # no tables yet
                pass
        os.kill(killed, signal.SIGKILL)  # the Ray worker that trains the run
        output, _ = sweep.communicate(timeout=180)
    finally:
        finish(sweep)
    assert sweep.returncode == 0, output
    assert "2 completed, 0 failed" in output

    with Session(engine) as session:
        runs = {run.variant: run for run in session.scalars(select(Run))}
        assert sorted(runs) == ["te", "twin"]
        assert {(run.status, len(run.epochs)) for run in runs.values()} == {("completed", epochs)}
        first, second = runs["te"].attempts  # exactly two
        assert (first.status, first.pid) == ("interrupted", killed)
        assert second.status == "completed" and second.pid != killed
        assert done < second.first_epoch < epochs  # resumed from its checkpoint, not started over
        assert [a.status for a in runs["twin"].attempts] == ["completed"]
    engine.dispose()
    rows = epoch_rows(db)
    resumed = {(seed, epoch): metrics for (_, variant, seed, epoch), metrics in rows.items() if variant == "te"}
    uninterrupted = {(seed, epoch): metrics for (_, variant, seed, epoch), metrics in rows.items() if variant == "twin"}
    assert len(resumed) == epochs and resumed == uninterrupted


def test_sigterm_to_the_ray_driver_exits_130_and_a_rerun_completes(tmp_path, ray_cluster):
    db = tmp_path / "t.db"
    # A run's set-up on a fresh Ray worker takes seconds, and the stop must land before its
    # last epoch: 8 digits epochs (2 s) were done before it under a loaded CI run.
    sweep_file = write(tmp_path, epochs=30)
    command = ray_command(sweep_file, ray_cluster, db, "--keep-warm", KEEP_WARM)
    code, stdout, stderr = sigterm_when_running(command, db)
    assert code == 130, stdout + stderr
    assert "sweep interrupted; run the same command again to resume" in stderr
    assert "Traceback" not in stdout + stderr
    # the two runs training stopped: interrupted, unless one had just finished its last epoch
    assert count(db, "running") == 0 and count(db, "interrupted") >= 1, (statuses(db), stderr)
    assert count(db, "interrupted") + count(db, "completed") == len(statuses(db)) >= 2

    stopped = run_pids(db)
    rerun = invoke(*command[3:])  # the same command, in this process
    assert rerun.exit_code == 0, rerun.output
    assert "0 failed, 0 interrupted" in rerun.output  # the stop did not outlive the stopped runs
    assert completed_keys(db) == run_keys(sweep_file)
    assert run_pids(db) & stopped  # trained by the stopped sweep's runners, kept warm


def test_more_runs_at_once_than_the_cluster_holds_queue_the_rest_and_complete(tmp_path, ray_cluster):
    """--workers 3 on 2 CPUs: the third runner waits for a CPU that the other two hold until
    nothing is left for them, and is handed no run before it starts."""
    db = tmp_path / "w.db"
    sweep_file = write(tmp_path, epochs=1)
    done = subprocess.run(ray_command(sweep_file, ray_cluster, db, "--workers", "3"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert completed_keys(db) == run_keys(sweep_file)


def test_two_ray_drivers_on_one_file_train_each_key_once(tmp_path, ray_cluster):
    """Started together: the database's claims keep them from training a key twice. One run
    at a time each (--workers 1): the two together fill the 2-CPU cluster."""
    db = tmp_path / "two.db"
    sweep_file = write(tmp_path)
    command = ray_command(sweep_file, ray_cluster, db, "--workers", "1")
    drivers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        outputs = [driver.communicate(timeout=300)[0] for driver in drivers]
    finally:
        finish(*drivers)
    assert [driver.returncode for driver in drivers] == [0, 0], "\n".join(outputs)
    assert all("at most 1 at once" in " ".join(output.split()) for output in outputs), outputs  # --workers, as a cap
    assert sorted(status for *_, status in statuses(db)) == ["completed"] * 4  # one run per key
    assert completed_keys(db) == run_keys(sweep_file)


POOL = """
import sys
from tecli.sweep.ray_cluster import RayCluster
cluster = RayCluster(address=sys.argv[1])
cluster.start()
pool = cluster.warm_pool(start=False)
if pool is not None and sys.argv[2] == "end":
    cluster.ray.kill(pool)  # its runners, lent or idle, end with it: it owns them
sys.exit(0 if pool is not None else 3)
"""


def warm_pool(address: str, action: str = "look") -> bool:
    """Whether this code's warm pool is on the cluster, asked by a fresh driver; `end` ends it
    (and with it the runners it owns)."""
    done = subprocess.run([sys.executable, "-c", POOL, address, action], capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 3), done.stderr
    return done.returncode == 0


def run_pids(db) -> set[int]:
    engine = open_database(db)
    try:
        with Session(engine) as session:
            return set(session.scalars(select(Run.pid)))
    finally:
        engine.dispose()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_a_sweep_within_keep_warm_trains_in_the_last_sweep_s_processes_which_then_end(tmp_path, ray_cluster, local_tiny):
    """The second sweep's runs train in the first one's runner processes, to the same epochs
    as the local executor's; KEEP_WARM seconds after the second, the runners are gone, and
    the pool with them once it has been empty EMPTY_END seconds."""
    sweep_file, local = local_tiny
    pids = []
    for name in ("first", "second"):
        db = tmp_path / f"{name}.db"
        done = subprocess.run(ray_command(sweep_file, ray_cluster, db, "--keep-warm", KEEP_WARM), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"runners kept warm {KEEP_WARM} s" in " ".join(done.stdout.split())
        assert epoch_rows(db) == local
        pids.append(run_pids(db))
    assert len(pids[0]) == 2 and pids[1] <= pids[0], pids  # the same two processes
    assert warm_pool(ray_cluster)
    wait_until(lambda: not any(map(alive, pids[0])), KEEP_WARM + 30, "the warm runners outlived --keep-warm")
    wait_until(lambda: not warm_pool(ray_cluster), 60, "the empty warm pool did not end")


def test_a_killed_driver_s_warm_runners_stop_its_runs_as_interrupted(tmp_path, ray_cluster):
    """The runners outlive their driver (the pool owns them): when it is killed outright they
    lose its channel and stop their runs, which record themselves interrupted (not left
    running for the liveness rules); the same command then completes the grid."""
    db = tmp_path / "k.db"
    sweep_file = write(tmp_path, epochs=30)
    command = ray_command(sweep_file, ray_cluster, db, "--keep-warm", KEEP_WARM)
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: running_before(db, 25) == 2, 120, "two runs never trained at once")
        pids = run_pids(db)
        driver.kill()
        driver.wait()
        wait_until(lambda: count(db, "running") == 0, 30, f"runs left running: {statuses(db)}")
    finally:
        finish(driver)
    assert count(db, "interrupted") == 2, statuses(db)
    assert all(map(alive, pids))  # the runners live on, lent to the dead driver until their lease ends
    assert warm_pool(ray_cluster, "end")  # which the test does not wait for: it ends them with their pool
    wait_until(lambda: not any(map(alive, pids)), 30, "the pool's runners outlived it")
    rerun = subprocess.run(command[:-2], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert completed_keys(db) == run_keys(sweep_file)


OTHER_CODE = """
import sys
import tecli.conditions
tecli.conditions.code_version = lambda: "src:other"  # as a driver of another version of tecli would be
from tecli.sweep.ray_cluster import RayCluster
from tecli.sweep.run import plan_sweep, run_sweep
cluster = RayCluster(address=sys.argv[1], keep_warm=600)
plan = plan_sweep(sys.argv[2], sys.argv[3], threads=1, executor=cluster)
assert run_sweep(plan, executor=cluster).counts() == {"completed": 4}
"""


def test_runners_kept_warm_for_other_code_are_ended_by_the_next_sweep(tmp_path, ray_cluster):
    """They would hold the cluster's 2 CPUs for 600 s: the sweep of this code ends them at
    its start, and trains in runners of its own."""
    sweep_file = write(tmp_path, epochs=1)
    other = subprocess.run([sys.executable, "-c", OTHER_CODE, ray_cluster, sweep_file, tmp_path / "other.db"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert other.returncode == 0, other.stderr
    kept = run_pids(tmp_path / "other.db")
    assert len(kept) == 2 and all(map(alive, kept))
    done = subprocess.run(ray_command(sweep_file, ray_cluster, tmp_path / "this.db"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert completed_keys(tmp_path / "this.db") == run_keys(sweep_file)
    assert not run_pids(tmp_path / "this.db") & kept
    wait_until(lambda: not any(map(alive, kept)), 30, "the other code's runners outlived the sweep")


def test_keep_warm_outside_ray_or_below_zero_is_one_line_exit_2(tmp_path):
    db = tmp_path / "s.db"
    for extra, message in (
        ([], "--address, --gpus-per-run and --keep-warm are for --executor ray; leave them out, or add --executor ray"),
        (["--executor", "ray"], "--keep-warm must be >= 0 seconds, got -1"),
    ):
        result = invoke("sweep", write(tmp_path), "--keep-warm", "-1", *extra, "--db", db)
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [f"error: {message}"], result.output
    assert not db.exists()


def test_ray_executor_without_ray_installed_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    db = tmp_path / "s.db"
    result = invoke("sweep", write(tmp_path), "--executor", "ray", "--db", db)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "pip install 'tecli[ray]'" in result.output
    assert not db.exists()


def test_an_address_where_no_ray_cluster_listens_is_one_line_exit_2(tmp_path):
    pytest.importorskip("ray")
    db = tmp_path / "s.db"
    # a subprocess: Ray may be connected in this process already, and the address then goes unchecked
    result = subprocess.run(ray_command(write(tmp_path), f"127.0.0.1:{free_port()}", db), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "no Ray cluster answers at 127.0.0.1:" in lines[0], lines
    assert not db.exists()


def test_threads_no_node_has_is_one_line_exit_2_before_anything_is_written(tmp_path, ray_cluster):
    """The session's cluster has one node of 2 CPUs: a 3-thread run would wait forever."""
    db = tmp_path / "s.db"
    result = subprocess.run(
        ray_command(write(tmp_path), ray_cluster, db, "--threads", "3"), capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines == ["error: --threads 3 is more CPUs than any node of the Ray cluster has (2)"], lines
    assert not db.exists()


def test_gpus_per_run_on_cuda(tmp_path, request):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device here")
    ray_cluster = request.getfixturevalue("ray_cluster")  # started only where it is needed
    db = tmp_path / "gpu.db"
    sweep_file = write(tmp_path, epochs=1)
    result = subprocess.run(
        ray_command(sweep_file, ray_cluster, db, "--device", "cuda", "--gpus-per-run", "0.5"),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert completed_keys(db) == run_keys(sweep_file)
    engine = open_database(db)
    try:
        with Session(engine) as session:
            conditions = session.execute(select(Run.device, Run.gpu_name)).all()
    finally:
        engine.dispose()
    assert len(conditions) == 4
    assert all(device.startswith("cuda") and gpu_name for device, gpu_name in conditions), conditions
