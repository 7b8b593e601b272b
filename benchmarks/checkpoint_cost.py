"""The checkpoint's share of an epoch on USPS and CIFAR-10 (goal: at most 2 %), and the
database growth per run.

A TE run (tecli's defaults) trains E epochs in this process. After each epoch its
recording is done twice, alternating which goes first, into two runs of one fresh
SQLite database (synchronous=FULL, as tecli runs it): the epoch row alone, and the
epoch row with the checkpoint (serialized and written in the same transaction, as
`tecli run` does). The checkpoint's cost is the difference, over the epoch's time.
The database keeps only the latest checkpoint per run, so its growth per run is
one checkpoint (a completed run's is its final model).

    python benchmarks/checkpoint_cost.py [--epochs-usps 5] [--epochs-cifar10 2] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from recorded import TEST_CONDITIONS  # noqa: E402

from tecli.checkpoint import dumps  # noqa: E402
from tecli.data import load_dataset  # noqa: E402
from tecli.db.recording import claim_run, record_epoch  # noqa: E402
from tecli.db.store import open_database  # noqa: E402
from tecli.spec import RunSpec, TEConfig  # noqa: E402
from tecli.train import train  # noqa: E402


def measure(dataset: str, epochs: int, folder: Path) -> None:
    data = load_dataset(dataset)
    spec = RunSpec(dataset=dataset, seed=0, epochs=epochs, te=TEConfig())
    db = folder / f"{dataset}.db"
    engine = open_database(db)
    with_checkpoint = claim_run(engine, spec, TEST_CONDITIONS)
    without = claim_run(engine, RunSpec(dataset=dataset, seed=1, epochs=epochs, te=TEConfig()), TEST_CONDITIONS)
    training = train(spec, data)
    shares, costs, sizes = [], [], []
    for result in training:
        def plain() -> float:
            start = time.perf_counter()
            record_epoch(engine, without, result)
            return time.perf_counter() - start

        def checkpointed() -> float:
            start = time.perf_counter()
            blob = dumps(training.state_dict())
            record_epoch(engine, with_checkpoint, result, blob)
            sizes.append(len(blob))
            return time.perf_counter() - start

        order = (plain, checkpointed) if result.epoch % 2 else (checkpointed, plain)
        timed = {f.__name__: f() for f in order}
        cost = timed["checkpointed"] - timed["plain"]
        costs.append(cost)
        shares.append(cost / result.seconds)
        print(
            f"  {dataset} epoch {result.epoch}: epoch {result.seconds:6.2f} s, epoch row {timed['plain'] * 1e3:6.1f} ms, "
            f"row + checkpoint {timed['checkpointed'] * 1e3:6.1f} ms, checkpoint {cost * 1e3:6.1f} ms = {cost / result.seconds:.2%}",
            flush=True,
        )
    engine.dispose()
    print(
        f"{dataset}: checkpoint {statistics.mean(costs) * 1e3:.1f} ms per epoch, {statistics.mean(shares):.2%} of an epoch "
        f"(max {max(shares):.2%}); checkpoint {sizes[-1] / 1e6:.2f} MB, kept once per run "
        f"(database {db.stat().st_size / 1e6:.2f} MB after {epochs} epochs x 2 runs)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs-usps", type=int, default=5)
    parser.add_argument("--epochs-cifar10", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as folder:
        measure("usps", args.epochs_usps, Path(folder))
        measure("cifar10", args.epochs_cifar10, Path(folder))


if __name__ == "__main__":
    main()
