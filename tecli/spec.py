"""Run specifications: every parameter that defines a run, validated, with a canonical key.

A RunSpec fully names a run (data set, seed, optimisation hyper-parameters and,
for a TE run, every TE parameter).  Execution settings that do not change what is
being measured (device, CPU threads, data folder) are not part of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from tecli.errors import UserError

TE_MODES = ("amplify", "dampen")
TE_REACHES = ("weights", "backprop")


@dataclass(frozen=True)
class TEConfig:
    """The TE feedback's parameters; the papers leave each of them open (method.md).

    threshold      g for hidden (ReLU) outputs: a neuron fires when its output > g.
    threshold_out  g for the class layer, whose output is its softmax probability.
    window         TE window length in training samples (rounded up to whole batches).
    refresh        TE is recomputed every `refresh` batches; factors stay fixed in between.
    fraction       share of the layer's (source, target) pairs that get feedback.
    delay          source delay d: c = x(t-d); 0 measures same-sample coupling (default,
                   see method.md: with shuffled samples d = 1 is estimator noise).
    lam            feedback strength: factor 1 + lam*TE (amplify) or 1 - lam*TE (dampen).
    mode           "amplify" or "dampen".
    layers         which Linear layers get feedback, as indices into the model's Linear
                   layers (-1: the class layer, whose input and output are the last two
                   fully connected layers).
    reach          "weights": only weight gradients are scaled; "backprop": the error sent
                   back through each scaled connection is scaled too.
    subset_seed    seed of the pair subset; None uses the run's seed.
    """

    threshold: float = 0.0
    threshold_out: float = 0.5
    window: int = 1024
    refresh: int = 32
    fraction: float = 0.5
    delay: int = 0
    lam: float = 1.0
    mode: str = "amplify"
    layers: tuple[int, ...] = (-1,)
    reach: str = "weights"
    subset_seed: int | None = None

    def validate(self) -> None:
        _check(self.window >= 2, f"te window must be >= 2 samples, got {self.window}")
        _check(self.refresh >= 1, f"te refresh must be >= 1 batch, got {self.refresh}")
        _check(0.0 < self.fraction <= 1.0, f"te fraction must be in (0, 1], got {self.fraction}")
        _check(self.delay >= 0, f"te delay must be >= 0, got {self.delay}")
        _check(self.lam >= 0.0, f"te lambda must be >= 0, got {self.lam}")
        _check(self.mode in TE_MODES, f"te mode must be one of {', '.join(TE_MODES)}, got {self.mode!r}")
        _check(self.reach in TE_REACHES, f"te reach must be one of {', '.join(TE_REACHES)}, got {self.reach!r}")
        _check(len(self.layers) > 0, "te layers must name at least one Linear layer")
        _check(len(set(self.layers)) == len(self.layers), f"te layers repeat an index: {self.layers}")


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    seed: int = 0
    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64
    weight_decay: float = 0.0
    te: TEConfig | None = None
    variant: str = field(default="")

    def __post_init__(self) -> None:
        if not self.variant:
            object.__setattr__(self, "variant", "te" if self.te else "baseline")

    def validate(self) -> "RunSpec":
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.lr > 0, f"learning rate must be > 0, got {self.lr}")
        _check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        _check(self.batch_size >= 2, f"batch size must be >= 2, got {self.batch_size}")
        _check(self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        if self.te is not None:
            self.te.validate()
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def te_seed(self) -> int:
        """Seed of the TE side's own generator (pair subset)."""
        if self.te is None or self.te.subset_seed is None:
            return self.seed
        return self.te.subset_seed

    def run_key(self) -> str:
        """Canonical hash of the complete specification (sorted-key JSON, sha256)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)
