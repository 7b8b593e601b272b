"""Epoch-time ratios, measured side by side in one process (USPS by default).

Claims (issue 13): channels-last training takes at most 0.75x the epoch time of the
contiguous layout on USPS; tecli's epoch is no slower than the best plain torch loop
for the same model (ratio <= 1.0); full TE feedback (every batch, every pair of the
last two Linear layers, window 1024) costs at most 1.10x the baseline's epoch.

1. layout: tecli baseline, channels-last vs contiguous (today's default vs the old one).
2. tecli baseline vs a minimal hand-written torch loop in channels-last (same model,
   tensors, batch order, train metrics and test evaluation).
3. TE feedback with default parameters vs the baseline.
4. full TE feedback (refresh 1, fraction 1, layers -2 and -1, window 1024) vs the baseline.

Epochs of the compared loops alternate in ABBA order (A B, B A, A B, ...) so that
machine noise and going second hit both alike; the first epoch of each is a warm-up
and not counted. The median of the per-epoch-pair ratios is the figure (robust to
the machine's occasional multi-second stalls); the ratio of means is printed beside it.

    python benchmarks/overhead.py [--dataset usps] [--epochs 6] [--threads 2] [--only 1,2,3,4]
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
from tecli.train import MEMORY_FORMATS, evaluate, train

FULL_FEEDBACK = TEConfig(refresh=1, fraction=1.0, layers=(-2, -1), window=1024)


def hand_written_epochs(spec: RunSpec, data, memory_format: str = "channels_last"):
    """The plainest loop that trains the same thing and measures what tecli records per
    epoch (running train loss and accuracy, test loss and accuracy); yields epoch seconds."""
    layout = MEMORY_FORMATS[memory_format]
    torch.manual_seed(spec.seed)
    model = build_model(data.input_shape, data.n_classes).to(memory_format=layout)
    order = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum)
    x, y, n = data.x_train.to(memory_format=layout), data.y_train, len(data.x_train)
    x_test = data.x_test.to(memory_format=layout)
    while True:
        start = time.perf_counter()
        permutation = torch.randperm(n, generator=order)
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
        for b in range(0, n, spec.batch_size):
            index = permutation[b : b + spec.batch_size]
            xb, yb = x[index], y[index]
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
        loss_sum.item(), correct.item()
        evaluate(model, x_test, data.y_test)
        yield time.perf_counter() - start


def tecli_epochs(spec: RunSpec, data, memory_format: str = "channels_last"):
    for result in train(spec, data, memory_format=memory_format):
        yield result.seconds


def compare(name_a, epochs_a, name_b, epochs_b, n_epochs: int) -> None:
    times_a, times_b = [], []
    for epoch in range(n_epochs + 1):
        if epoch % 2:  # ABBA order: the loop that goes second in a pair is not always the same
            b, a = next(epochs_b), next(epochs_a)
        else:
            a, b = next(epochs_a), next(epochs_b)
        if epoch > 0:  # epoch 0 warms up (JIT, allocator, caches)
            times_a.append(a)
            times_b.append(b)
    mean_a, mean_b = statistics.mean(times_a), statistics.mean(times_b)
    median_ratio = statistics.median(a / b for a, b in zip(times_a, times_b))
    print(f"  {name_a:<26} mean epoch {mean_a:.3f} s  (epochs: {', '.join(f'{t:.3f}' for t in times_a)})")
    print(f"  {name_b:<26} mean epoch {mean_b:.3f} s  (epochs: {', '.join(f'{t:.3f}' for t in times_b)})")
    print(f"  ratio {name_a} / {name_b} = {median_ratio:.3f} (median of epoch pairs; ratio of means {mean_a / mean_b:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="usps")
    parser.add_argument("--epochs", type=int, default=6, help="measured epochs per loop (plus one warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--only", default="1,2,3,4", help="which comparisons, e.g. 1,4")
    args = parser.parse_args()
    cases = {int(case) for case in args.only.split(",")}
    configure("cpu", args.threads)
    data = load_dataset(args.dataset, args.data_dir)
    base = RunSpec(dataset=args.dataset, seed=0, epochs=args.epochs + 1)
    print(f"{args.dataset} ({data.copy}), batch {base.batch_size}, torch threads {torch.get_num_threads()}")
    if 1 in cases:
        print("1. layout: tecli baseline, channels-last vs contiguous")
        compare("channels-last", tecli_epochs(base, data), "contiguous", tecli_epochs(base, data, "contiguous"), args.epochs)
    if 2 in cases:
        print("2. tecli baseline vs hand-written torch loop (channels-last)")
        compare("tecli baseline", tecli_epochs(base, data), "hand-written loop", hand_written_epochs(base, data), args.epochs)
    if 3 in cases:
        te = replace(base, te=TEConfig())
        print(f"3. TE feedback vs baseline, default TE parameters {te.te}")
        compare("tecli TE", tecli_epochs(te, data), "tecli baseline", tecli_epochs(base, data), args.epochs)
    if 4 in cases:
        print(f"4. full TE feedback vs baseline: {FULL_FEEDBACK}")
        full = replace(base, te=FULL_FEEDBACK)
        compare("tecli full feedback", tecli_epochs(full, data), "tecli baseline", tecli_epochs(base, data), args.epochs)


if __name__ == "__main__":
    main()
