"""The epoch loop: SGD with momentum over in-memory tensors, optional TE feedback.

Seeding: torch's global generator (seeded with the run's seed) initialises the
weights; a separate torch generator with the same seed draws each epoch's sample
order.  The TE side uses its own numpy generator, so a baseline and a TE run
with the same seed start identically and see the same batches.

Train loss and accuracy are running averages over the epoch's batches (the model
changes during the epoch); test metrics are measured after the epoch.

Memory format: channels-last (NHWC) by default, on CPU and CUDA: the same model and
optimizer ran a USPS epoch in 0.67x and an MNIST epoch in 0.83x the time of the
contiguous (NCHW) layout on a 2-core AVX2 CPU, and seeded runs stay identical from
run to run. The two layouts give slightly different numbers (other kernels), so the
format is recorded with each run as a condition of measurement; "contiguous" gives
the results of tecli before it.

Observing (`observe`, a probe size; tecli.observe) measures the layers on a fixed probe
set after each epoch's timed span; it draws no torch random number and changes no
state that training reads, so the epochs are those of the unobserved run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from tecli.data import DataSplits
from tecli.epoch import EpochResult
from tecli.models import build_model
from tecli.observe.probe import Probe
from tecli.optim import SGD
from tecli.spec import RunSpec
from tecli.te.feedback import TEFeedback

EVAL_BATCH = 1024
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


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


class Training:
    """One run's training: model, optimizer, sample order and TE feedback, one epoch at a time.

    Iterating yields an EpochResult per remaining epoch. Between epochs, state_dict()
    holds everything the next epoch depends on (weights, momentum, every generator,
    the feedback's windows and factors, the epoch count); load_state_dict() on a new
    Training of the same spec and data continues bit for bit on the same machine.
    Model, optimizer and feedback are built in the constructor, so a bad parameter
    fails there and not half-way into the first epoch.
    """

    def __init__(
        self,
        spec: RunSpec,
        data: DataSplits,
        device: str = "cpu",
        on_batch=None,
        memory_format: str = "channels_last",
        observe: int | None = None,
    ):
        self.spec = spec
        self.device = device
        self.on_batch = on_batch  # on_batch(done, total) after every training batch (progress display)
        layout = MEMORY_FORMATS[memory_format]
        torch.manual_seed(spec.seed)
        self.model_args = {"input_shape": list(data.input_shape), "n_classes": data.n_classes, "model": spec.model}
        self.model = build_model(**self.model_args).to(device, memory_format=layout)
        self.order = torch.Generator().manual_seed(spec.seed)
        self.optimizer = SGD(self.model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
        self.feedback = TEFeedback(self.model, spec.te, spec.batch_size, spec.te_seed) if spec.te else None
        self.x_train, self.y_train = data.x_train.to(device, memory_format=layout), data.y_train.to(device)
        self.x_test, self.y_test = data.x_test.to(device, memory_format=layout), data.y_test.to(device)
        self.probe = Probe(self.model, self.x_train, self.y_train, observe, spec.seed) if observe else None
        self.epoch = 0  # epochs finished
        self.reached = False  # an epoch reached spec.stop_at: the run is over

    def __iter__(self) -> Iterator[EpochResult]:
        self.model.train()
        try:
            while self.epoch < self.spec.epochs and not self.reached:
                result = self._train_epoch(self.epoch + 1)
                if self.probe:  # after the epoch's timed span: observing is not training
                    result = self.probe.observe(result)
                self.epoch += 1
                self.reached = self.spec.stop_at is not None and result.test_acc >= self.spec.stop_at
                yield result
        finally:
            if self.feedback:
                self.feedback.close()

    def _train_epoch(self, epoch: int) -> EpochResult:
        spec, model, feedback, device = self.spec, self.model, self.feedback, self.device
        n = len(self.x_train)
        n_batches = (n + spec.batch_size - 1) // spec.batch_size
        start, cpu_start = time.perf_counter(), time.process_time()
        te_before = feedback.seconds if feedback else 0.0
        permutation = torch.randperm(n, generator=self.order).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for b in range(n_batches):
            index = permutation[b * spec.batch_size : (b + 1) * spec.batch_size]
            xb, yb = self.x_train[index], self.y_train[index]
            if feedback:
                feedback.before_batch()
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if feedback:
                feedback.after_backward()
            self.optimizer.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            if self.on_batch:
                self.on_batch(b + 1, n_batches)
        test_loss, test_acc = evaluate(model, self.x_test, self.y_test)
        te_mean, te_max = feedback.te_stats() if feedback else (None, None)
        diagnostics = feedback.diagnostics() if feedback else {}
        return EpochResult(
            epoch=epoch,
            train_loss=loss_sum.item() / n,
            train_acc=correct.item() / n,
            test_loss=test_loss,
            test_acc=test_acc,
            seconds=time.perf_counter() - start,
            cpu_seconds=time.process_time() - cpu_start,
            te_seconds=(feedback.seconds - te_before) if feedback else 0.0,
            te_mean=te_mean,
            te_max=te_max,
            **diagnostics,
        )

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "reached": self.reached,
            "model_args": self.model_args,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "order_rng": self.order.get_state(),
            "feedback": self.feedback.state_dict() if self.feedback else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if (state["feedback"] is None) != (self.feedback is None):
            raise ValueError("checkpoint and run disagree on TE feedback")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.order.set_state(state["order_rng"])
        if self.feedback:
            self.feedback.load_state_dict(state["feedback"])
        self.epoch = int(state["epoch"])
        self.reached = bool(state.get("reached", False))  # checkpoints from before stop_at lack it


def train(
    spec: RunSpec,
    data: DataSplits,
    device: str = "cpu",
    on_batch: Callable[[int, int], None] | None = None,
    memory_format: str = "channels_last",
    observe: int | None = None,
) -> Training:
    """The run's Training: iterate it for one EpochResult per epoch; with `observe`, a probe
    of that many training samples measures the layers after each epoch."""
    return Training(spec, data, device, on_batch, memory_format, observe)
