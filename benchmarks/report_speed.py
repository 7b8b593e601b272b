"""`tecli report` on 1,000 runs x 50 epochs: wall time of the whole command.

Fills a fresh SQLite database through the recording API (a sweep, 5 data sets x
100 seeds x 2 variants, 50 epochs each, all under one set of conditions), then times `tecli report` as a user
runs it (a new process: imports, database open, computation, rendering), for the
terminal table and for markdown. Goal: under 2 seconds. CPU time is printed next
to wall time: on a machine busy with other work it shows what the command costs.

    python benchmarks/report_speed.py [--db PATH]
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tecli.db.store import open_database
from tecli.epoch import EpochResult
from tecli.spec import RunSpec, TEConfig
from tecli.sweep.file import SweepSpec
from tecli.sweep.plan import register

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from recorded import TEST_CONDITIONS, record_run  # noqa: E402  (the tests' helper: claim, epochs, finish)

DATASETS = ("usps", "mnist", "fashionmnist", "cifar10", "svhn")


def fill(path: str) -> None:
    engine = open_database(path)
    targets = {d: {"target": 0.9, "metric": "test_acc"} for d in DATASETS}
    sweep_id = register(engine, SweepSpec("bench", Path("bench.toml"), "", "0" * 64, targets, ()))
    rng = np.random.default_rng(0)
    for dataset in DATASETS:
        for seed in range(100):
            for te in (False, True):
                spec = RunSpec(dataset=dataset, seed=seed, epochs=50, te=TEConfig() if te else None)
                acc = 1 - 0.5 * np.exp(-np.arange(1, 51) / rng.uniform(5, 15))
                epochs = [
                    EpochResult(epoch, 0.1, acc[epoch - 1], 0.2, acc[epoch - 1],
                                1.0, 0.03 if te else 0.0, 0.05 if te else None, 0.4 if te else None)
                    for epoch in range(1, 51)
                ]  # fmt: skip
                record_run(engine, spec, epochs, conditions=TEST_CONDITIONS, sweep_id=sweep_id, data_copy="synthetic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="keep the filled database here and reuse it on the next run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or str(Path(tmp) / "big.db")
        if not Path(db).exists():
            start = time.perf_counter()
            fill(db)
            print(f"filled 1,000 runs x 50 epochs through the recording API in {time.perf_counter() - start:.1f} s")
        for fmt in ("table", "markdown"):
            best_wall = best_cpu = float("inf")
            for _ in range(3):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "tecli", "report", "--db", db, "--format", fmt],
                               check=True, capture_output=True)  # fmt: skip
                best_wall = min(best_wall, time.perf_counter() - start)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                best_cpu = min(best_cpu, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            print(f"tecli report --format {fmt}: wall {best_wall:.2f} s, CPU {best_cpu:.2f} s (best of 3, whole command)")


if __name__ == "__main__":
    main()
