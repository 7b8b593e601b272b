"""Epoch-time ratios on USPS, measured side by side in one process.

1. TE feedback (default parameters) against the baseline, same seed.
2. tecli's baseline epoch against a minimal hand-written torch loop over the same
   model, tensors, batch order and test evaluation.

Epochs of the compared loops alternate (A, B, A, B, ...) so that machine noise
hits both alike; the first epoch of each is a warm-up and not counted.

    python benchmarks/overhead.py [--epochs 6] [--threads 2] [--data-dir PATH]
"""

import argparse
import statistics
import time
from dataclasses import replace

import torch
from torch import nn

from tecli.data import load_dataset
from tecli.models import build_model
from tecli.runner import configure
from tecli.spec import RunSpec, TEConfig
from tecli.train import evaluate, train


def hand_written_epochs(spec: RunSpec, data):
    """The plainest loop that trains the same thing; yields epoch seconds."""
    torch.manual_seed(spec.seed)
    model = build_model(data.input_shape, data.n_classes)
    order = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum)
    x, y, n = data.x_train, data.y_train, len(data.x_train)
    while True:
        start = time.perf_counter()
        permutation = torch.randperm(n, generator=order)
        for b in range(0, n, spec.batch_size):
            index = permutation[b : b + spec.batch_size]
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        evaluate(model, data.x_test, data.y_test)
        yield time.perf_counter() - start


def tecli_epochs(spec: RunSpec, data):
    for result in train(spec, data):
        yield result.seconds


def compare(name_a, epochs_a, name_b, epochs_b, n_epochs: int) -> None:
    times_a, times_b = [], []
    for epoch in range(n_epochs + 1):
        a, b = next(epochs_a), next(epochs_b)
        if epoch > 0:  # epoch 0 warms up (JIT, allocator, caches)
            times_a.append(a)
            times_b.append(b)
    mean_a, mean_b = statistics.mean(times_a), statistics.mean(times_b)
    print(f"  {name_a:<22} mean epoch {mean_a:.3f} s  (epochs: {', '.join(f'{t:.3f}' for t in times_a)})")
    print(f"  {name_b:<22} mean epoch {mean_b:.3f} s  (epochs: {', '.join(f'{t:.3f}' for t in times_b)})")
    print(f"  ratio {name_a} / {name_b} = {mean_a / mean_b:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="measured epochs per loop (plus one warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    configure("cpu", args.threads)
    data = load_dataset("usps", args.data_dir)
    base = RunSpec(dataset="usps", seed=0, epochs=args.epochs + 1)
    te = replace(base, te=TEConfig())
    print(f"USPS ({data.copy}), batch {base.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"1. TE feedback vs baseline, default TE parameters {te.te}")
    compare("tecli TE", tecli_epochs(te, data), "tecli baseline", tecli_epochs(base, data), args.epochs)
    print("2. tecli baseline vs hand-written torch loop")
    compare("tecli baseline", tecli_epochs(base, data), "hand-written loop", hand_written_epochs(base, data), args.epochs)


if __name__ == "__main__":
    main()
