"""Start-up and shut-down of a run, measured from outside the process.

Claim (issue 13): a short run should spend its time training, not starting. For
`tecli run` (USPS, TE feedback, 2 epochs, a fresh process each time), this prints:

- start -> first batch: from just before the process is started to the first
  training batch (epoch 1's recorded_at minus its seconds: the database's own rows);
- last epoch -> exit: from the last epoch's row to the process's exit (final status
  write, summary, interpreter teardown);

the median of --repeats runs, and, in separate fresh processes, what the start-up
is made of: `import torch`, tecli's first optimizer (tecli.optim.SGD), the TE
kernels' warm-up, and the exit of an interpreter that has torch loaded, with its
teardown (as Python exits) and without (as `tecli` exits: tecli.cli._exit); and,
for comparison, the first torch.optim.SGD, which tecli no longer uses (it imports
torch._dynamo).

    python benchmarks/startup.py [--repeats 3] [--data-dir PATH]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timezone
from pathlib import Path

from sqlalchemy import select

from tecli.db.schema import Epoch, Run
from tecli.db.store import open_database

PARTS = r"""
import time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
model = torch.nn.Linear(84, 10)
from tecli.optim import SGD
optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
t2 = time.perf_counter()
from tecli.spec import TEConfig
from tecli.te.feedback import TEFeedback
from tecli.models import build_model
feedback = TEFeedback(build_model((1, 16, 16), 10), TEConfig(), 64, 0)
t3 = time.perf_counter()
torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
t4 = time.perf_counter()
print(f"{t1 - t0} {t2 - t1} {t3 - t2} {t4 - t3} {time.time()}", flush=True)
if sys.argv[1] == "tecli":
    from tecli.cli import _exit
    _exit(0)
"""


def timestamp(moment) -> float:
    return moment.replace(tzinfo=timezone.utc).timestamp()


def one_run(folder: Path, index: int, data_dir: str | None) -> tuple[float, float, float]:
    db = folder / f"run{index}.db"
    command = [sys.executable, "-m", "tecli", "run", "--dataset", "usps", "--epochs", "2", "--te", "--seed", str(index), "--db", str(db)]
    if data_dir:
        command += ["--data-dir", data_dir]
    began = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    ended = time.time()
    engine = open_database(db)
    with engine.connect() as connection:
        epochs = connection.execute(select(Epoch.recorded_at, Epoch.seconds).order_by(Epoch.epoch)).all()
        assert connection.execute(select(Run.status)).scalar() == "completed"
    engine.dispose()
    first_batch = timestamp(epochs[0].recorded_at) - epochs[0].seconds
    return first_batch - began, ended - timestamp(epochs[-1].recorded_at), sum(e.seconds for e in epochs)


def parts() -> tuple[float, ...]:
    exits = []
    for how in ("python", "tecli"):
        done = subprocess.run([sys.executable, "-c", "import sys\n" + PARTS, how], capture_output=True, text=True, check=True)
        ended = time.time()
        torch_s, optimizer_s, warm_up_s, torch_optim_s, last = map(float, done.stdout.split())
        exits.append(ended - last)
    return torch_s, optimizer_s, warm_up_s, *exits, torch_optim_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("TECLI_DATA_DIR"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        runs = [one_run(Path(folder), i, args.data_dir) for i in range(args.repeats)]
    starts, ends, trains = zip(*runs)
    print(f"tecli run --dataset usps --epochs 2 --te, {args.repeats} fresh processes (median):")
    print(f"  start -> first batch   {statistics.median(starts):6.2f} s   ({', '.join(f'{s:.2f}' for s in starts)})")
    print(f"  training (2 epochs)    {statistics.median(trains):6.2f} s")
    print(f"  last epoch -> exit     {statistics.median(ends):6.2f} s   ({', '.join(f'{s:.2f}' for s in ends)})")
    measured = [parts() for _ in range(args.repeats)]
    names = ("import torch", "first tecli.optim.SGD", "TE warm-up (model + feedback)", "exit with Python's teardown",
             "exit as tecli exits (no teardown)", "first torch.optim.SGD (not used)")
    print("what start-up and exit are made of (fresh processes, median):")
    for name, values in zip(names, zip(*measured)):
        print(f"  {name:<30} {statistics.median(values):6.2f} s")


if __name__ == "__main__":
    main()
