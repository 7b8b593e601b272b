"""`tecli report` on 1,000 runs x 50 epochs: wall time of the whole command, and where it goes.

Fills a fresh SQLite database through the recording API (a sweep, 5 data sets x
100 seeds x 2 variants, 50 epochs each, all under one set of conditions), then times `tecli report` as a
user runs it (a new process: imports, database open, computation, rendering), in
every format, best and median of --repeats runs. CPU time is printed next to wall
time: on a machine busy with other work it shows what the command costs. Then one
more process per repeat splits a markdown report into imports, database open, query,
computation (the rest of build_report) and rendering; the whole command adds the
interpreter's start and exit (finalizing SQLAlchemy, typer and the rest).

Goal: at most 1 second (the report took 1.9 s while it imported pandas and SciPy's
stats for every format). For scale, the last line times those two imports alone on
this machine, now.

    python benchmarks/report_speed.py [--db PATH] [--repeats 5]
"""

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tecli.db.store import open_database
from tecli.epoch import EpochResult
from tecli.report.render import FORMATS
from tecli.spec import RunSpec, TEConfig
from tecli.sweep.file import SweepSpec
from tecli.sweep.plan import register

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from recorded import TEST_CONDITIONS, record_run  # noqa: E402  (the tests' helper: claim, epochs, finish)

DATASETS = ("usps", "mnist", "fashionmnist", "cifar10", "svhn")
PHASES = ("imports", "open", "query", "build", "render")

# One markdown report in a new process, timed phase by phase; prints the seconds of PHASES.
BREAKDOWN = """
import sys, time
start = time.perf_counter()
import tecli.cli
from tecli.db.store import open_database
from tecli.report import build, render
imported = time.perf_counter()
engine = open_database(sys.argv[1], create=False)
opened = time.perf_counter()
load, query = build._load, []
def timed_load(*args):
    begin = time.perf_counter()
    loaded = load(*args)
    query.append(time.perf_counter() - begin)
    return loaded
build._load = timed_load
report = build.build_report(engine)
built = time.perf_counter()
render.markdown(report, [])
rendered = time.perf_counter()
print(imported - start, opened - imported, query[0], built - opened - query[0], rendered - built)
"""


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


def timed(command: list[str]) -> tuple[float, float, str]:
    """(wall, CPU seconds, stdout) of one run of `command` in a new process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, out


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="keep the filled database here and reuse it on the next run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement (best and median are printed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or str(Path(tmp) / "big.db")
        if not Path(db).exists():
            start = time.perf_counter()
            fill(db)
            print(f"filled 1,000 runs x 50 epochs through the recording API in {time.perf_counter() - start:.1f} s")
        print(f"tecli report, the whole command in a new process (best / median of {args.repeats}):")
        for fmt in FORMATS:
            runs = [timed([sys.executable, "-m", "tecli", "report", "--db", db, "--format", fmt]) for _ in range(args.repeats)]
            walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
            print(f"  --format {fmt:<9} wall {spread(walls)}, CPU {spread(cpus)}")
        phases = [[float(v) for v in timed([sys.executable, "-c", BREAKDOWN, db])[2].split()] for _ in range(args.repeats)]
        parts = ", ".join(f"{name} {statistics.median(p[i] for p in phases):.3f}" for i, name in enumerate(PHASES))
        total = statistics.median(sum(p) for p in phases)
        print(f"one markdown report, phase by phase (median of {args.repeats}, s): {parts}; sum {total:.2f} s")
        print("  (the whole command adds the interpreter's start and exit)")
        old_imports = [timed([sys.executable, "-c", "import pandas, scipy.stats"])[0] for _ in range(args.repeats)]
        print(f"for scale: python -c 'import pandas, scipy.stats' (what the old report imported) takes {spread(old_imports)} here now")


if __name__ == "__main__":
    main()
