"""Sweep efficiency: how much of a sweep's wall time its workers spend training.

Claim (issue 12): with warm workers, the local pool and Ray keep 2 workers at least
85 % busy on 8 USPS runs x 3 epochs, where a process per run loses seconds of
start-up (imports, kernels, interpreter teardown) on every run. On Ray, a sweep's
runners start cold (a worker process, torch, tecli, the TE kernels: seconds) unless an
earlier sweep kept them warm (--keep-warm).

    efficiency = sum of recorded epoch seconds / (wall time x workers)

Executors, 2 workers (1 thread per run), on a fresh SQLite database each time:
- per-run: the old design, a freshly spawned interpreter per run
  (LocalPool(runs_per_process=1, start_method="spawn"));
- warm: the local pool as `tecli sweep` runs it (workers forked from the sweep
  process on Linux, each training run after run);
- ray: a Ray cluster of this machine (started here, 2 CPUs, before the clock starts),
  its runners started by the sweep (any kept warm are ended before it);
- ray-warm: the same with --keep-warm: the runners kept warm by the sweep before it (a
  1-epoch sweep of the same file, untimed), as when a researcher runs sweep after sweep.

Every measurement is one fresh driver process (as `tecli sweep` is). Two clocks:
- sweep: run_sweep() only; the start-up of its workers is counted, the driver's own
  imports and planning (with Ray, joining the cluster, as `tecli sweep` does) are not
  (the issue's definition);
- command: from the driver's interpreter start to the end of run_sweep, so the
  driver's imports (torch among them, which forked workers then need not repeat),
  the database's creation and the planning are counted too.
Sweeps alternate between executors (the machine is noisy); the table gives mean ±
standard deviation over repeats. For the warm pool it also prints each worker's
resident memory after each of its runs (it must not grow from run to run).

--epochs N trains every run N epochs instead (longer runs: what start-up costs is spread
over more training).

    python benchmarks/sweep_efficiency.py [--repeats 2] [--executors per-run warm ray ray-warm] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SWEEPS = {
    "usps": ("usps", 3),  # 4 seeds x {baseline, te} = 8 runs
    "digits": ("digits", 5),
}
FILE = """
name = "efficiency-{dataset}"
seeds = [0, 1, 2, 3]
[defaults]
epochs = {epochs}
[defaults.te]
window = 128
[datasets.{dataset}]
target = 0.9
[variants.baseline]
te = false
[variants.te]
te = true
"""
WORKERS = 2
KEEP_WARM = 120  # seconds, for ray-warm

DRIVER = r"""
import time
began = time.perf_counter()  # the interpreter has started; nothing of tecli or torch is imported
import json, sys
from pathlib import Path
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tecli.db.schema import Epoch
from tecli.sweep.local import LocalPool
from tecli.sweep.run import plan_sweep, run_sweep

file, db, kind, address, keep_warm = sys.argv[1:6]
if kind.startswith("ray"):
    from tecli.sweep.ray_cluster import RayCluster
    executor = RayCluster(address=address, keep_warm=float(keep_warm))
else:
    executor = LocalPool(2, runs_per_process=1, start_method="spawn") if kind == "per-run" else LocalPool(2)
plan = plan_sweep(file, db, threads=1, executor=executor)
pids, memory = {}, {}

def rss_mib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None

def on_event(event):
    if event.kind == "started":
        pids[event.index] = event.pid
    elif event.kind == "finished" and event.index in pids:
        memory.setdefault(pids[event.index], []).append(rss_mib(pids[event.index]))

start = time.perf_counter()
result = run_sweep(plan, executor=executor, on_event=on_event)
end = time.perf_counter()
wall, command = end - start, end - began
with Session(plan.engine) as session:
    epoch_seconds = session.scalar(select(func.sum(Epoch.seconds)))
print(json.dumps({"wall": wall, "command": command, "epoch_seconds": epoch_seconds, "counts": dict(result.counts()),
                  "memory": {str(pid): values for pid, values in memory.items()}}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray() -> tuple[str, Path]:
    ray = Path(sys.executable).with_name("ray")
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [str(ray), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", str(WORKERS),
         "--include-dashboard=false", "--disable-usage-stats"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    return f"127.0.0.1:{port}", ray


END_WARM_POOL = """
import sys
from tecli.sweep.ray_cluster import RayCluster
cluster = RayCluster(address=sys.argv[1])
cluster.start()
cluster.end_idle_warm_runners()
"""


def drive(folder: Path, sweep: str, kind: str, address: str, db: Path, epochs: int) -> dict:
    dataset, _ = SWEEPS[sweep]
    file = folder / f"{sweep}-{epochs}.toml"
    file.write_text(FILE.format(dataset=dataset, epochs=epochs))
    keep_warm = KEEP_WARM if kind == "ray-warm" else 0
    out = subprocess.run([sys.executable, "-c", DRIVER, str(file), str(db), kind, address, str(keep_warm)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{kind} {sweep} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(folder: Path, sweep: str, kind: str, address: str, number: int, epochs: int | None = None) -> dict:
    if kind == "ray":  # cold: none kept warm
        subprocess.run([sys.executable, "-c", END_WARM_POOL, address], check=True, capture_output=True)
    if kind == "ray-warm":  # runners kept warm by a sweep before
        drive(folder, sweep, kind, address, folder / f"{sweep}-{kind}-{number}-warm-up.db", 1)
    result = drive(folder, sweep, kind, address, folder / f"{sweep}-{kind}-{number}.db", epochs or SWEEPS[sweep][1])
    assert result["counts"] == {"completed": 8}, result["counts"]
    result["efficiency"] = result["epoch_seconds"] / (result["wall"] * WORKERS)
    result["command_efficiency"] = result["epoch_seconds"] / (result["command"] * WORKERS)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    kinds = ["per-run", "warm", "ray", "ray-warm"]
    parser.add_argument("--executors", nargs="+", default=kinds, choices=kinds)
    parser.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: 3 for usps, 5 for digits)")
    args = parser.parse_args()
    if not os.environ.get("TECLI_DATA_DIR"):
        raise SystemExit("set TECLI_DATA_DIR to the folder with usps.h5")

    address, ray = ("", None)
    if any(kind.startswith("ray") for kind in args.executors):
        address, ray = start_ray()
    folder = Path(tempfile.mkdtemp(prefix="tecli-efficiency-"))
    results: dict[tuple[str, str], list[dict]] = {}
    try:
        for number in range(args.repeats):
            for sweep in args.sweeps:
                for kind in args.executors:
                    result = measure(folder, sweep, kind, address, number, args.epochs)
                    results.setdefault((sweep, kind), []).append(result)
                    print(f"  {sweep:6} {kind:8} repeat {number + 1}: wall {result['wall']:6.1f} s, "
                          f"epochs {result['epoch_seconds']:6.1f} s, efficiency {result['efficiency']:.2f} "
                          f"(command {result['command']:.1f} s: {result['command_efficiency']:.2f})", flush=True)
    finally:
        if ray is not None:
            subprocess.run([str(ray), "stop", "--force"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)

    epochs = f"{args.epochs} epochs each" if args.epochs else "epochs: usps 3, digits 5"
    print(f"\nsweep efficiency, {WORKERS} workers x 1 thread, 8 runs per sweep ({epochs}), {args.repeats} repeat(s): mean ± sd")
    print(f"{'sweep':8} {'executor':9} {'wall s':>13} {'epoch s':>13} {'efficiency':>13} {'command s':>13} {'command eff.':>13}")
    for (sweep, kind), runs in results.items():
        def stat(key: str, digits: int) -> str:
            values = [r[key] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"
        print(f"{sweep:8} {kind:9} {stat('wall', 1):>13} {stat('epoch_seconds', 1):>13} {stat('efficiency', 2):>13} "
              f"{stat('command', 1):>13} {stat('command_efficiency', 2):>13}")

    warm = [r for (sweep, kind), runs in results.items() if kind == "warm" for r in runs]
    if warm:
        print("\nwarm pool: resident memory (MiB) of each worker after each of its runs")
        for r in warm:
            for pid, values in r["memory"].items():
                print(f"  worker {pid}: " + " -> ".join(f"{v:.0f}" for v in values if v is not None))


if __name__ == "__main__":
    main()
