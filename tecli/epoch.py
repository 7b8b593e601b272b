"""What one finished epoch measured: the record that training yields and the database stores.

Kept free of torch so that the store, the report and tests can build such records.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def te_share(self) -> float:
        return self.te_seconds / self.seconds if self.seconds else 0.0
