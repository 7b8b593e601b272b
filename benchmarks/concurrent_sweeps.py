"""1, 2 and 4 `tecli sweep` processes of the same 8-run file on one database, SQLite and
PostgreSQL: duplicate attempts (must be 0) and wall time relative to one sweep.

The file is digits, 4 seeds x {baseline, te}, 3 epochs. Every sweep is a real
`tecli sweep FILE --workers 1 --threads 1` process, all started at once on a fresh
database; they share the grid by claiming run keys. "duplicates" counts attempts
beyond one per run key that trained at all (an attempt with a recorded epoch), and
keys completed more than once. PostgreSQL is a throwaway server started here
(tests/postgres_server.py, Debian's binaries).

    python benchmarks/concurrent_sweeps.py [--sweeps 1 2 4] [--backends sqlite postgresql]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from postgres_server import PostgresServer  # noqa: E402

from tecli.db.schema import Epoch, Run  # noqa: E402
from tecli.db.store import open_database  # noqa: E402

SWEEP = """
name = "concurrent"
seeds = [0, 1, 2, 3]
[defaults]
epochs = 3
[defaults.te]
window = 128
[datasets.digits]
target = 0.9
[variants.baseline]
te = false
[variants.te]
te = true
"""
KEYS = 8


def run_sweeps(count: int, db: str, sweep_file: Path) -> tuple[float, list[int]]:
    open_database(db)  # the schema exists before the race; the wall time is the sweeps'
    command = [sys.executable, "-m", "tecli", "sweep", str(sweep_file), "--workers", "1", "--threads", "1", "--db", db]
    start = time.perf_counter()
    sweeps = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(count)]
    errors = [sweep.communicate()[1] for sweep in sweeps]
    wall = time.perf_counter() - start
    codes = [sweep.returncode for sweep in sweeps]
    if any(codes):
        raise SystemExit(f"a sweep failed: exit codes {codes}\n" + "\n".join(errors))
    return wall, codes


def duplicates(db: str) -> tuple[int, int]:
    """(attempts that trained beyond one per key, keys completed more than once), and checks the grid is done."""
    with Session(open_database(db)) as session:
        trained = session.execute(
            select(Run.run_key, func.count(func.distinct(Run.id)))
            .join(Epoch, Epoch.run_id == Run.id)
            .group_by(Run.run_key)
        ).all()
        completed = session.execute(
            select(Run.run_key, func.count()).where(Run.status == "completed").group_by(Run.run_key)
        ).all()
    if len(completed) != KEYS:
        raise SystemExit(f"the grid is not complete: {len(completed)} of {KEYS} keys")
    return sum(n - 1 for _, n in trained), sum(1 for _, n in completed if n > 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    print(f"{KEYS} runs (digits, 3 epochs), each sweep --workers 1 --threads 1, on a {__import__('os').cpu_count()}-core machine")
    print(f"{'backend':<11} {'sweeps':>6} {'wall s':>8} {'vs 1 sweep':>10} {'extra attempts':>15} {'keys completed twice':>21}")
    with tempfile.TemporaryDirectory() as folder, PostgresServer() as server:
        sweep_file = Path(folder) / "concurrent.toml"
        sweep_file.write_text(SWEEP)
        for backend in args.backends:
            base = None
            for count in args.sweeps:
                name = f"b_{backend}_{count}"
                db = str(Path(folder) / f"{name}.db") if backend == "sqlite" else server.create_database(name)
                wall, _ = run_sweeps(count, db, sweep_file)
                base = base or wall
                extra, twice = duplicates(db)
                print(f"{backend:<11} {count:>6} {wall:>8.1f} {wall / base:>10.2f} {extra:>15} {twice:>21}", flush=True)


if __name__ == "__main__":
    main()
