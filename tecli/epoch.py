"""What one finished epoch measured: the record that training yields and the database stores.

Kept free of torch so that the store, the report and tests can build such records.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerObservation:
    """One layer's information measures on the probe set after an epoch (tecli.observe), in bits."""

    layer: str  # conv1, conv2, ... (conv blocks), fc1, fc2 (hidden Linear layers), class
    position: int  # 0-based, from input to output
    neurons: int
    neuron_entropy: float  # mean over neurons of the binary entropy of the neuron's fire rate
    h_t: float  # H(T) of the layer's binary patterns (= I(X;T): the net is deterministic)
    i_ty: float  # I(T;Y) between the patterns and the labels
    te_next: float | None = None  # mean TE to the next Linear layer (fc layers but the class layer)
    te_class: float | None = None  # mean TE to the class layer (for the last hidden layer: te_next)


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    seconds: float  # wall time of the epoch: training, TE work and test evaluation
    te_seconds: float  # part of `seconds` spent on TE work (capture, binarize, engine, scaling)
    te_mean: float | None  # mean TE (bits) over the active pairs at the epoch's last refresh
    te_max: float | None
    cpu_seconds: float | None = None  # process CPU time (all threads) over the span of `seconds`
    # Feedback diagnostics of a TE run's epoch (None for a baseline): did the feedback act?
    source_fire_rate: float | None = None  # mean fire rate of the feedback's source neurons
    target_fire_rate: float | None = None  # and of its target neurons
    te_positive_share: float | None = None  # share of active pairs with TE > 0 at the epoch's refreshes
    factor_dev_mean: float | None = None  # mean |factor - 1| over the factors applied in the epoch
    factor_dev_max: float | None = None  # max |factor - 1|: 0 means the feedback changed nothing
    # With --observe (tecli.observe): measured after the epoch's timed span, so not part of `seconds`.
    observe_seconds: float | None = None  # wall time of the observation
    observed: tuple[LayerObservation, ...] = ()  # one per observed layer, input to output

    @property
    def te_share(self) -> float:
        return self.te_seconds / self.seconds if self.seconds else 0.0
