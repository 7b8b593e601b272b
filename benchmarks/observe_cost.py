"""Observing's cost: an epoch with `--observe` (default probe) against the same epoch without, side by side.

Claim (issue 15): observing after every epoch adds at most 10 % to the epoch's time on USPS and
CIFAR-10 at the default probe size (tecli.observe.DEFAULT_PROBE).

Per data set, two Trainings of the same baseline spec, one observed and one not, advance one
epoch at a time in ABBA order (A B, B A, ...) so that machine noise and going second hit both
alike; the first epoch of each warms up and is not counted. Each step is timed from outside
(the observed one's step is its epoch plus the observation, which tecli keeps out of the
epoch's recorded seconds). Printed: median step times, the median of the per-pair ratios
observed / plain, and the median of the observation's share of its epoch (observe_seconds /
seconds, as recorded).

    python benchmarks/observe_cost.py [--datasets usps,cifar10] [--repeats 3] [--threads 2]
"""

import argparse
import statistics
import time

import torch

from tecli.data import load_dataset
from tecli.observe import DEFAULT_PROBE
from tecli.runner import configure
from tecli.spec import RunSpec
from tecli.train import train


def timed_steps(training):
    """(wall seconds of the step, its EpochResult) per epoch of `training`."""
    epochs = iter(training)
    while True:
        start = time.perf_counter()
        result = next(epochs)
        yield time.perf_counter() - start, result


def compare(dataset: str, repeats: int, data_dir) -> None:
    data = load_dataset(dataset, data_dir)
    spec = RunSpec(dataset=dataset, seed=0, epochs=repeats + 1)
    observed, plain = timed_steps(train(spec, data, observe=DEFAULT_PROBE)), timed_steps(train(spec, data))
    pairs = []
    for epoch in range(repeats + 1):
        if epoch % 2:  # ABBA: which one goes second alternates
            b, a = next(plain), next(observed)
        else:
            a, b = next(observed), next(plain)
        if epoch > 0:  # epoch 1 warms up (first calls, allocator, caches)
            pairs.append((a, b))
    observed_s = [a[0] for a, _ in pairs]
    plain_s = [b[0] for _, b in pairs]
    share = [a[1].observe_seconds / a[1].seconds for a, _ in pairs]
    ratio = statistics.median(a / b for a, b in zip(observed_s, plain_s))
    print(f"{dataset} ({data.copy}), {len(data.x_train)} training samples, probe {DEFAULT_PROBE}, {repeats} epoch pairs")
    print(f"  plain epoch     median {statistics.median(plain_s):.3f} s  ({', '.join(f'{t:.3f}' for t in plain_s)})")
    print(f"  observed epoch  median {statistics.median(observed_s):.3f} s  ({', '.join(f'{t:.3f}' for t in observed_s)})")
    print(f"  observation     median {statistics.median(a[1].observe_seconds for a, _ in pairs):.3f} s, "
          f"median share of its epoch {statistics.median(share):.1%}")  # fmt: skip
    print(f"  ratio observed / plain = {ratio:.3f} (median of epoch pairs; goal <= 1.10)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="usps,cifar10")
    parser.add_argument("--repeats", type=int, default=3, help="measured epoch pairs per data set (plus one warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    configure("cpu", args.threads)
    print(f"torch threads {torch.get_num_threads()}")
    for dataset in args.datasets.split(","):
        compare(dataset, args.repeats, args.data_dir)


if __name__ == "__main__":
    main()
