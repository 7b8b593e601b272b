"""Run specifications: every parameter that defines a run, validated, with a canonical key.

A RunSpec fully names a run (data set, variant name, seed, model, optimisation
hyper-parameters and, for a TE run, every TE parameter). Execution settings that
do not change what is measured (device, CPU threads, data folder) are not part
of it. One table of rules per parameter serves both the command line and sweep
files, so a value is judged the same way wherever it comes from; `where` turns
a field name into what the user typed (`--te-lambda`, `variants.te.lam`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tecli.errors import UserError, shown

TE_MODES = ("amplify", "dampen")
# Every tecli model has two hidden Linear layers and the class layer (models.HIDDEN).
LINEAR_LAYERS = 3
TE_REACHES = ("weights", "backprop")
# tecli.models.MODELS (which needs torch, not imported here); the first is the default.
MODEL_NAMES = ("cnn", "cnn-wide", "resnet18")


@dataclass(frozen=True)
class Rule:
    """What a parameter accepts: a type (int, float, str, bool or a list of int), or a tuple of
    types (a number or a name), and a condition."""

    kind: type | tuple[type, ...]
    expect: str  # read as "expected <expect>"
    ok: Callable[[Any], bool] = lambda value: True


# Every integer parameter fits a 32-bit database integer (PostgreSQL's INTEGER).
INT_MAX = 2**31 - 1


def _int(expect: str, ok=lambda v: True) -> Rule:
    return Rule(int, f"an integer {expect}".strip(), ok)


def _float(expect: str, ok=lambda v: True) -> Rule:
    return Rule(float, f"a finite number {expect}".strip(), lambda v: math.isfinite(v) and ok(v))


def _number_or(*names: str) -> Rule:
    """A finite number, or one of `names` (a threshold that is set from the data)."""
    expect = ", ".join(["a number", *names[:-1]]) + f" or {names[-1]}"
    return Rule((float, str), expect, lambda v: v in names if isinstance(v, str) else math.isfinite(v))


def _layer_indices(values: tuple[int, ...]) -> bool:
    in_range = all(-LINEAR_LAYERS <= v < LINEAR_LAYERS for v in values)
    return 0 < len(values) and in_range and len({v % LINEAR_LAYERS for v in values}) == len(values)


def _choice(options: tuple[str, ...]) -> Rule:
    return Rule(str, f"one of {', '.join(options)}", lambda v: v in options)


TRAIN_RULES: dict[str, Rule] = {
    "epochs": _int(">= 1", lambda v: v >= 1),
    "lr": _float("> 0", lambda v: v > 0),
    "momentum": _float("in [0, 1)", lambda v: 0 <= v < 1),
    "batch_size": _int(">= 2", lambda v: v >= 2),
    "weight_decay": _float(">= 0", lambda v: v >= 0),
    "model": _choice(MODEL_NAMES),
    "stop_at": _float("in (0, 1] (a test accuracy)", lambda v: 0 < v <= 1),
}
SEED_RULE = _int(">= 0", lambda v: v >= 0)
TE_RULES: dict[str, Rule] = {
    "threshold": _number_or("median"),
    "threshold_out": _number_or("argmax", "uniform"),
    "window": _int(">= 2 (samples)", lambda v: v >= 2),
    "refresh": _int(">= 1 (batches)", lambda v: v >= 1),
    "fraction": _float("in (0, 1]", lambda v: 0 < v <= 1),
    "delay": _int(">= 0", lambda v: v >= 0),
    "lam": _float(">= 0", lambda v: v >= 0),
    "mode": _choice(TE_MODES),
    "layers": Rule(
        list,
        f"Linear layer indices from -{LINEAR_LAYERS} to {LINEAR_LAYERS - 1}, each layer once, such as [-1]",
        _layer_indices,
    ),
    "reach": _choice(TE_REACHES),
    "subset_seed": _int(">= 0", lambda v: v >= 0),
    "permute": Rule(bool, "true or false"),
}


def check_value(where: str, rule: Rule, value: Any) -> Any:
    """The value in canonical form (int -> float for numbers, list -> tuple), or UserError."""
    kinds = rule.kind if isinstance(rule.kind, tuple) else (rule.kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if rule.kind is list:
        good_type = isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
        value = tuple(value) if good_type else value
    else:
        good_type = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
    if good_type and rule.kind is int and value > INT_MAX:
        raise UserError(f"{where}: expected an integer <= {INT_MAX}, got {shown(repr(value))}")
    if not (good_type and rule.ok(value)):
        raise UserError(f"{where}: expected {rule.expect}, got {shown(repr(value))}")
    if rule.kind is list:
        value = tuple(sorted(v % LINEAR_LAYERS - LINEAR_LAYERS for v in value))  # one spelling per choice
    return value


def _check_fields(obj, rules: dict[str, Rule], where: Callable[[str], str]) -> None:
    for name, rule in rules.items():
        value = getattr(obj, name)
        if value is not None:
            object.__setattr__(obj, name, check_value(where(name), rule, value))


@dataclass(frozen=True)
class TEConfig:
    """The TE feedback's parameters; the papers leave each of them open (method.md).

    threshold      g for hidden (ReLU) outputs, the feedback's source neurons and hidden
                   targets: a neuron fires when its output > g. "median": a neuron fires
                   when its output exceeds its own median over the mini-batch (torch.median
                   along the batch, the lower median for an even batch size): about half
                   fire, whatever the scale of each neuron's activations.
    threshold_out  g for the class layer, whose output is its softmax probability: a class
                   fires when its probability > g. "argmax": the predicted class fires (one
                   target per sample; torch.argmax of the logits, the first on ties).
                   "uniform": a class fires when its probability > 1 / number of classes.
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
    permute        a control: at each refresh the TE values of the chosen pairs are applied
                   to a random permutation of those pairs (drawn from the TE side's own
                   generator), so the feedback keeps its strength (the same factors) but
                   loses which connection carries information.
    """

    threshold: float | str = 0.0
    threshold_out: float | str = 0.5
    window: int = 1024
    refresh: int = 32
    fraction: float = 0.5
    delay: int = 0
    lam: float = 1.0
    mode: str = "amplify"
    layers: tuple[int, ...] = (-1,)
    reach: str = "weights"
    subset_seed: int | None = None
    permute: bool = False

    def validate(self, where: Callable[[str], str] = lambda name: f"te.{name}") -> "TEConfig":
        _check_fields(self, TE_RULES, where)
        return self


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    seed: int = 0
    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64
    weight_decay: float = 0.0
    model: str = MODEL_NAMES[0]
    # The run ends after the first epoch whose test accuracy reaches stop_at (None: all
    # epochs). Epochs to the target are unchanged; the epochs after it, which cost most of a
    # study whose baseline reaches its target early, are not trained.
    stop_at: float | None = None
    te: TEConfig | None = None
    variant: str = field(default="")

    def __post_init__(self) -> None:
        if not self.variant:
            object.__setattr__(self, "variant", "te" if self.te else "baseline")

    def validate(self, where: Callable[[str], str] = str) -> "RunSpec":
        """Check every field (UserError naming `where(field)`); canonicalizes types in place."""
        _check_fields(self, {"seed": SEED_RULE, **TRAIN_RULES}, where)
        if self.te is not None:
            self.te.validate(lambda name: where(f"te.{name}"))
        return self

    def to_dict(self) -> dict:
        """Every field, but `model`, `stop_at` and te's `permute` only when not the default: runs
        recorded before they could be chosen keep their configuration and their run key."""
        config = asdict(self)
        if config["model"] == MODEL_NAMES[0]:
            del config["model"]
        if config["stop_at"] is None:
            del config["stop_at"]
        if config["te"] is not None and not config["te"]["permute"]:
            del config["te"]["permute"]
        return config

    @classmethod
    def from_dict(cls, config: dict) -> "RunSpec":
        """The RunSpec a run recorded (to_dict's output), validated; its run key is the recorded one."""
        te = TEConfig(**config["te"]) if config.get("te") else None
        return cls(**{**config, "te": te}).validate()

    def check_fits(self, n_train: int) -> None:
        """Sizes that depend on the data: a batch and a TE window fit in the training set."""
        if self.batch_size > n_train:
            raise UserError(
                f"batch size {self.batch_size} is larger than {self.dataset}'s training set ({n_train} samples); "
                "use a smaller --batch-size (batch_size in sweep files)"
            )
        if self.model == "resnet18" and n_train % self.batch_size == 1:
            raise UserError(
                f"batch size {self.batch_size} leaves a last batch of one sample ({self.dataset} has {n_train} training "
                "samples), on which resnet18's batch norm cannot train; use another --batch-size (batch_size in sweep files)"
            )
        if self.te is not None and self.te.window > n_train:
            raise UserError(
                f"TE window {self.te.window} is longer than {self.dataset}'s training set ({n_train} samples); "
                "use a smaller --te-window (te window in sweep files)"
            )
        if self.te is not None and self.te.delay >= n_train:
            raise UserError(
                f"TE delay {self.te.delay} is not shorter than {self.dataset}'s training set ({n_train} samples); "
                "use a smaller --te-delay (te delay in sweep files)"
            )

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

