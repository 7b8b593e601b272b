"""Sweep files (experiments.toml): loading, validation with key paths, expansion to RunSpecs.

    name = "paper-offline"            # required
    description = "..."               # optional
    seeds = [0, 1, 2, 3, 4]           # required, distinct integers >= 0

    [defaults]                        # optional; training parameters of every run
    epochs = 10                       # epochs, lr, momentum, batch_size, weight_decay
    metric = "test_acc"               # what targets apply to: test_acc or train_acc

    [defaults.te]                     # optional; TE parameters of every TE variant
    lam = 1.0                         # any TEConfig field

    [datasets.usps]                   # one table per data set (at least one)
    epochs = 20                       # any training parameter, overriding defaults
    target = 0.95                     # target accuracy for the report (optional)
    metric = "test_acc"               # overrides defaults.metric

    [variants.baseline]               # one table per variant (at least one)
    te = false                        # required: false = no feedback

    [variants.te]
    te = true                         # feedback with defaults.te ...
    lam = 2.0                         # ... and these overrides

The grid is datasets x seeds x variants. Every problem is reported as one line
`FILE: KEY.PATH (line N): what is wrong` before anything runs.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tecli.errors import UserError, shown
from tecli.spec import SEED_RULE, TE_RULES, TRAIN_RULES, Rule, RunSpec, TEConfig, check_value

METRICS = ("test_acc", "train_acc")
METRIC_RULE = Rule(str, f"one of {', '.join(METRICS)}", lambda v: v in METRICS)
TARGET_RULE = Rule(float, "an accuracy in (0, 1]", lambda v: 0 < v <= 1)
NAME_RULE = Rule(str, "a non-empty name of letters, digits, '.', '_' or '-'", lambda v: bool(re.fullmatch(r"[\w.-]+", v)))


@dataclass(frozen=True)
class SweepSpec:
    name: str
    path: Path
    source: str  # the file's text, recorded with the sweep
    source_hash: str
    targets: dict[str, dict[str, Any]]  # data set -> {"target": float | None, "metric": str}
    runs: tuple[RunSpec, ...]


class _Where:
    """Names a key path in the file, with its line when it can be found."""

    def __init__(self, path: Path, source: str):
        self.path = path
        self.lines = source.splitlines()

    def __call__(self, *keys: str) -> str:
        dotted = ".".join(shown(key if key.isprintable() else repr(key)) for key in keys)  # one line
        line = self._line(keys)
        return f"{shown(self.path)}: {dotted}" + (f" (line {line})" if line else "")

    def _line(self, keys: tuple[str, ...]) -> int | None:
        """Line of `key = ...` inside table [a.b], or of the table header itself."""
        table, key = ".".join(keys[:-1]), keys[-1]
        current = ""
        for number, text in enumerate(self.lines, 1):
            stripped = text.strip()
            header = re.fullmatch(r"\[\s*([^\]]+?)\s*\]", stripped)
            if header:
                current = re.sub(r"\s*\.\s*", ".", header.group(1))
                if current == ".".join(keys):
                    return number
            elif current == table and re.match(rf"{re.escape(key)}\s*=", stripped):
                return number
        return None


def _table(where: _Where, value: Any, *keys: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{where(*keys)}: expected a table, got {shown(repr(value))}")
    return value


def _known(where: _Where, table: dict, allowed: set[str], *keys: str) -> None:
    for key in table:
        if key not in allowed:
            raise UserError(f"{where(*keys, key)}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _values(where: _Where, table: dict, rules: dict[str, Rule], *keys: str) -> dict:
    return {k: check_value(where(*keys, k), rules[k], v) for k, v in table.items() if k in rules}


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; UserError (one line) on any problem."""
    path = Path(path)
    try:
        source = path.read_text()
    except OSError as error:
        raise UserError(f"cannot read the sweep file {shown(path)}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{shown(path)}: not a text file (TOML must be UTF-8)") from None
    return parse_sweep(source, path)


def parse_sweep(source: str, path: Path) -> SweepSpec:
    """Validate a sweep file's text (`path` names it in messages) and expand it to RunSpecs."""
    from tecli.data import DATASET_NAMES

    try:
        doc = tomllib.loads(source)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{shown(path)}: TOML syntax error: {error}") from None
    where = _Where(path, source)

    _known(where, doc, {"name", "description", "seeds", "defaults", "datasets", "variants"})
    for required in ("name", "seeds", "datasets", "variants"):
        if required not in doc:
            raise UserError(f"{shown(path)}: {required}: missing (see the commented example in README.md)")
    name = check_value(where("name"), NAME_RULE, doc["name"])
    if "description" in doc:
        check_value(where("description"), Rule(str, "a string"), doc["description"])
    seeds = doc["seeds"]
    if not isinstance(seeds, list) or not seeds:
        raise UserError(f"{where('seeds')}: expected a non-empty list of integers, got {shown(repr(seeds))}")
    seeds = [check_value(where(f"seeds[{i}]"), SEED_RULE, s) for i, s in enumerate(seeds)]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{where('seeds')}: seeds repeat: {shown(seeds)}")

    defaults = _table(where, doc.get("defaults", {}), "defaults")
    _known(where, defaults, {*TRAIN_RULES, "metric", "te"}, "defaults")
    train_defaults = _values(where, defaults, TRAIN_RULES, "defaults")
    default_metric = check_value(where("defaults", "metric"), METRIC_RULE, defaults.get("metric", "test_acc"))
    te_defaults = _table(where, defaults.get("te", {}), "defaults", "te")
    _known(where, te_defaults, set(TE_RULES), "defaults", "te")
    te_defaults = _values(where, te_defaults, TE_RULES, "defaults", "te")

    datasets = _table(where, doc["datasets"], "datasets")
    if not datasets:
        raise UserError(f"{where('datasets')}: no data sets; add a [datasets.NAME] table")
    targets: dict[str, dict[str, Any]] = {}
    train_params: dict[str, dict] = {}
    for dataset, table in datasets.items():
        if dataset not in DATASET_NAMES:
            raise UserError(f"{where('datasets', dataset)}: unknown data set (known: {', '.join(DATASET_NAMES)})")
        table = _table(where, table, "datasets", dataset)
        _known(where, table, {*TRAIN_RULES, "target", "metric"}, "datasets", dataset)
        train_params[dataset] = {**train_defaults, **_values(where, table, TRAIN_RULES, "datasets", dataset)}
        targets[dataset] = {
            "target": check_value(where("datasets", dataset, "target"), TARGET_RULE, table["target"])
            if "target" in table
            else None,
            "metric": check_value(where("datasets", dataset, "metric"), METRIC_RULE, table.get("metric", default_metric)),
        }

    variants = _table(where, doc["variants"], "variants")
    if not variants:
        raise UserError(f"{where('variants')}: no variants; add e.g. [variants.baseline] with te = false")
    te_configs: dict[str, TEConfig | None] = {}
    for variant, table in variants.items():
        check_value(where("variants", variant), NAME_RULE, variant)
        table = _table(where, table, "variants", variant)
        _known(where, table, {"te", *TE_RULES}, "variants", variant)
        if not isinstance(table.get("te"), bool):
            raise UserError(f"{where('variants', variant, 'te')}: expected true or false, got {shown(repr(table.get('te')))}")
        overrides = _values(where, table, TE_RULES, "variants", variant)
        if not table["te"]:
            if overrides:
                raise UserError(f"{where('variants', variant, next(iter(overrides)))}: TE parameter on a variant with te = false")
            te_configs[variant] = None
        else:
            te_configs[variant] = TEConfig(**{**te_defaults, **overrides})

    runs = tuple(
        RunSpec(dataset=dataset, seed=seed, variant=variant, te=te, **train_params[dataset]).validate(
            lambda field: where("datasets", dataset, field)
        )
        for dataset in datasets
        for seed in seeds
        for variant, te in te_configs.items()
    )
    return SweepSpec(
        name=name,
        path=path,
        source=source,
        source_hash=hashlib.sha256(source.encode()).hexdigest(),
        targets=targets,
        runs=runs,
    )
