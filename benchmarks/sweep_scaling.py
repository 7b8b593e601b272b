"""The same small sweep with 1 and then 2 workers, in one process: runs per minute and ratio.

The sweep is USPS, 4 seeds x {baseline, te}, 3 epochs: 8 runs. Each worker count
gets a fresh database; per-run CPU threads follow tecli's default (cores / workers),
so both settings use the whole machine and the ratio shows what parallel runs
add over one run using every core. Process start-up (imports, data load) is part
of each run and part of the measurement.

    python benchmarks/sweep_scaling.py [--data-dir PATH]
"""

import argparse
import tempfile
import time
from pathlib import Path

from typer.testing import CliRunner

from tecli.cli import app

SWEEP = """
name = "scaling"
seeds = [0, 1, 2, 3]

[defaults]
epochs = 3

[datasets.usps]

[variants.baseline]
te = false

[variants.te]
te = true
"""


def runs_per_minute(workers: int, folder: Path, data_dir: str | None) -> float:
    sweep_file = folder / "scaling.toml"
    sweep_file.write_text(SWEEP)
    args = ["sweep", str(sweep_file), "--workers", str(workers), "--db", str(folder / f"w{workers}.db")]
    if data_dir:
        args += ["--data-dir", data_dir]
    start = time.perf_counter()
    result = CliRunner().invoke(app, args)
    seconds = time.perf_counter() - start
    assert result.exit_code == 0 and "8 completed" in result.output, result.output
    print(f"  {workers} worker(s): 8 runs in {seconds:.1f} s = {8 / seconds * 60:.2f} runs/min")
    return 8 / seconds * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = runs_per_minute(1, Path(tmp), args.data_dir)
        two = runs_per_minute(2, Path(tmp), args.data_dir)
    print(f"  ratio 2 workers / 1 worker = {two / one:.2f}")


if __name__ == "__main__":
    main()
