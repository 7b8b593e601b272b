"""The epoch loop: SGD with momentum over in-memory tensors, optional TE feedback.

Seeding: torch's global generator (seeded with the run's seed) initialises the
weights; a separate torch generator with the same seed draws each epoch's sample
order.  The TE side uses its own numpy generator, so a baseline and a TE run
with the same seed start identically and see the same batches.

Train loss and accuracy are running averages over the epoch's batches (the model
changes during the epoch); test metrics are measured after the epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from tecli.data import DataSplits
from tecli.epoch import EpochResult
from tecli.models import build_model
from tecli.spec import RunSpec
from tecli.te.feedback import TEFeedback

EVAL_BATCH = 1024


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on (x, y)."""
    model.eval()
    loss_sum = 0.0
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), EVAL_BATCH):
            logits = model(x[start : start + EVAL_BATCH])
            target = y[start : start + EVAL_BATCH]
            loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
            correct += (logits.argmax(1) == target).sum().item()
    model.train()
    return loss_sum / len(x), correct / len(x)


def train(
    spec: RunSpec,
    data: DataSplits,
    device: str = "cpu",
    on_batch: Callable[[int, int], None] | None = None,
) -> Iterator[EpochResult]:
    """Train the data set's CNN as `spec` says; returns an iterator of one EpochResult per epoch.

    Model, optimizer and feedback are built before this returns, so a bad
    parameter fails here and not half-way into the first epoch.
    on_batch(done, total) is called after every training batch (progress display).
    """
    torch.manual_seed(spec.seed)
    model = build_model(data.input_shape, data.n_classes).to(device)
    order = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )
    feedback = TEFeedback(model, spec.te, spec.batch_size, spec.te_seed) if spec.te else None
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    n = len(x_train)
    n_batches = (n + spec.batch_size - 1) // spec.batch_size

    def epochs() -> Iterator[EpochResult]:
        model.train()
        try:
            for epoch in range(1, spec.epochs + 1):
                start = time.perf_counter()
                te_before = feedback.seconds if feedback else 0.0
                permutation = torch.randperm(n, generator=order).to(device)
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), dtype=torch.long, device=device)
                for b in range(n_batches):
                    index = permutation[b * spec.batch_size : (b + 1) * spec.batch_size]
                    xb, yb = x_train[index], y_train[index]
                    if feedback:
                        feedback.before_batch()
                    logits = model(xb)
                    loss = nn.functional.cross_entropy(logits, yb)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if feedback:
                        feedback.after_backward()
                    optimizer.step()
                    loss_sum += loss.detach() * len(yb)
                    correct += (logits.detach().argmax(1) == yb).sum()
                    if on_batch:
                        on_batch(b + 1, n_batches)
                test_loss, test_acc = evaluate(model, x_test, y_test)
                te_mean, te_max = feedback.te_stats() if feedback else (None, None)
                yield EpochResult(
                    epoch=epoch,
                    train_loss=loss_sum.item() / n,
                    train_acc=correct.item() / n,
                    test_loss=test_loss,
                    test_acc=test_acc,
                    seconds=time.perf_counter() - start,
                    te_seconds=(feedback.seconds - te_before) if feedback else 0.0,
                    te_mean=te_mean,
                    te_max=te_max,
                )
        finally:
            if feedback:
                feedback.close()

    return epochs()
