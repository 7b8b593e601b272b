"""Sweep files (experiments.toml): loading, --set overrides, validation with key paths,
expansion of parameter grids to RunSpecs.

    name = "paper-offline"            # required
    description = "..."               # optional
    seeds = [0, 1, 2, 3, 4]           # required, distinct integers >= 0
    observe = true                    # optional: observe every run (tecli.observe), true = 512
                                      # probe samples, or the probe size; not part of run keys

    [defaults]                        # optional; training parameters of every run
    epochs = 10                       # epochs, lr, momentum, batch_size, weight_decay, model,
                                      # stop_at (end a run once its test accuracy reaches it)
    metric = "test_acc"               # what targets apply to: test_acc or train_acc

    [defaults.te]                     # optional; TE parameters of every TE variant
    lam = 1.0                         # any TEConfig field

    [datasets.usps]                   # one table per data set (at least one)
    epochs = 20                       # any training parameter, overriding defaults
    target = 0.95                     # target accuracy for the report (optional)
    metric = "test_acc"               # overrides defaults.metric

    [variants.baseline]               # one table per variant (at least one)
    te = false                        # required: false = no feedback

    [variants.baseline-lr02]          # a control: variants may set training parameters
    te = false
    lr = 0.02

    [variants.te]
    te = true                         # feedback with defaults.te ...
    lam = [1, 4, 16]                  # ... and these overrides; a list is a grid
    mode = ["amplify", "dampen"]

A run's parameters are [defaults] and [defaults.te], overridden by [datasets.X], then
by the variant (a variant's value wins over the data set's). A TE parameter on a
variant with te = false is an error. Any training or TE parameter, wherever it is
written, may be a list: the runs are the Cartesian product of the lists that apply to
them, and their variant names say which values they took (tecli.sweep.grid):
`te(lam=4.0,mode=dampen)`, listed parameters in alphabetical order. A list in [defaults]
thus names every variant's runs (`baseline(lr=0.02)`), one in [defaults.te] every TE
variant's, one in [datasets.X] the runs of that data set: runs with different
parameters never share a data set, variant name and seed. `layers` is itself a list:
`layers = [-2, -1]` is one value, `layers = [[-1], [-2, -1]]` a grid of two. `seeds`
is the seed list, not a grid dimension. A file without lists gives the names and run
keys it always gave.

The grid is datasets x seeds x (expanded) variants. Every problem in the file is
reported, one line each, `FILE: KEY.PATH (line N): what is wrong` (at most
MAX_PROBLEMS lines), before anything runs. `--set KEY.PATH=VALUE` (tecli.sweep.overrides)
replaces a value; problems in a value set that way say `(--set)` instead of a line.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tecli.db.schema import Run
from tecli.errors import UserError, shown
from tecli.observe import OBSERVE_RULE, probe_size
from tecli.spec import SEED_RULE, TE_RULES, TRAIN_RULES, Rule, RunSpec, TEConfig, check_value
from tecli.sweep.grid import Param, expand
from tecli.sweep.overrides import effective_source, parse_set, set_value
from tecli.sweep.toml_text import key_text, value_text

METRICS = ("test_acc", "train_acc")
METRIC_RULE = Rule(str, f"one of {', '.join(METRICS)}", lambda v: v in METRICS)
TARGET_RULE = Rule(float, "an accuracy in (0, 1]", lambda v: 0 < v <= 1)
NAME_RULE = Rule(str, "a non-empty name of letters, digits, '.', '_' or '-'", lambda v: bool(re.fullmatch(r"[\w.-]+", v)))
MAX_PROBLEMS = 20
VARIANT_NAME_MAX = Run.variant.type.length  # the database's column

TOP_KEYS = {"name", "description", "seeds", "observe", "defaults", "datasets", "variants"}
DEFAULTS_KEYS = {*TRAIN_RULES, "metric", "te"}
DATASET_KEYS = {*TRAIN_RULES, "target", "metric"}
VARIANT_KEYS = {"te", *TRAIN_RULES, *TE_RULES}


class SweepFileError(UserError):
    """Every problem found in a sweep file, one line each; str() shows at most
    MAX_PROBLEMS of them, then "... and N more"."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            lines.append(f"... and {len(problems) - MAX_PROBLEMS} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class SweepSpec:
    name: str
    path: Path
    source: str  # the file's text (with --set: the effective text, see overrides.py), recorded with the sweep
    source_hash: str
    targets: dict[str, dict[str, Any]]  # data set -> {"target": float | None, "metric": str}
    runs: tuple[RunSpec, ...]
    observe: int | None = None  # the probe size every run is observed with (None: not observed)


class _Where:
    """Names a key path in the file, with its line when it can be found ((--set) for a set value)."""

    def __init__(self, path: Path, source: str, overridden: set[tuple[str, ...]]):
        self.path = path
        self.lines = source.splitlines()
        self.overridden = overridden

    def __call__(self, *keys: str, index: int | None = None) -> str:
        dotted = ".".join(shown(key if key.isprintable() else repr(key)) for key in keys)  # one line
        dotted += f"[{index}]" if index is not None else ""
        if any(keys[:n] in self.overridden for n in range(1, len(keys) + 1)):
            return f"{shown(self.path)}: {dotted} (--set)"
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


class _Problems:
    """Collects the file's problems, each as one line naming its key path."""

    def __init__(self, where: _Where):
        self.where = where
        self.found: list[str] = []

    def add(self, keys: tuple[str, ...], what: str, index: int | None = None) -> None:
        self._record(f"{self.where(*keys, index=index)}: {what}")

    def value(self, keys: tuple[str, ...], rule: Rule, value: Any, index: int | None = None) -> Any:
        """The value in canonical form, or None (a problem recorded) when the rule refuses it."""
        try:
            return check_value(self.where(*keys, index=index), rule, value)
        except UserError as error:
            self._record(str(error))
            return None

    def _record(self, line: str) -> None:
        if line not in self.found:  # a variant is expanded once per data set
            self.found.append(line)

    def table(self, keys: tuple[str, ...], value: Any) -> dict | None:
        if isinstance(value, dict):
            return value
        self.add(keys, f"expected a table, got {shown(repr(value))}")
        return None

    def known(self, keys: tuple[str, ...], table: dict, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                self.add((*keys, key), f"unknown key (allowed: {', '.join(sorted(allowed))})")


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read and validate a sweep file, with `overrides` ("KEY.PATH=VALUE", as --set) applied.
    UserError (one line) for an unreadable file or a bad override, SweepFileError (every
    problem) for an invalid file."""
    path = Path(path)
    try:
        source = path.read_text()
    except OSError as error:
        raise UserError(f"cannot read the sweep file {shown(path)}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{shown(path)}: not a text file (TOML must be UTF-8)") from None
    return parse_sweep(source, path, overrides)


def parse_sweep(source: str, path: Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Validate a sweep file's text (`path` names it in messages), apply `overrides`, and
    expand it to RunSpecs."""
    settings = [parse_set(text) for text in overrides]
    try:
        doc = tomllib.loads(source)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{shown(path)}: TOML syntax error: {error}") from None
    for (keys, value), text in zip(settings, overrides):
        _check_settable(doc, keys, text, path)
        set_value(doc, keys, value, text)
    problems = _Problems(_Where(path, source, {keys for keys, _ in settings}))
    name, targets, runs = _check(doc, problems)
    observe = problems.value(("observe",), OBSERVE_RULE, doc.get("observe", False))
    if problems.found:
        raise SweepFileError(problems.found)
    recorded = effective_source(source, doc, settings) if settings else source
    return SweepSpec(name, path, recorded, hashlib.sha256(recorded.encode()).hexdigest(), targets, runs, probe_size(observe))


def _check_settable(doc: dict, keys: tuple[str, ...], text: str, path: Path) -> None:
    """--set may give any key of the format; a data set or variant must have its table in the file."""
    section = keys[0]
    if section in ("datasets", "variants") and len(keys) == 3:
        tables = doc.get(section)
        if not (isinstance(tables, dict) and keys[1] in tables):
            table = f"{section}.{key_text(keys[1])}"
            raise UserError(f"--set {shown(text)}: {shown(path)} has no [{shown(table)}] table; add it to the file")
        if keys[2] in (DATASET_KEYS if section == "datasets" else VARIANT_KEYS):
            return
    settable = {("name",), ("description",), ("seeds",), ("observe",)}
    settable |= {("defaults", key) for key in DEFAULTS_KEYS - {"te"}} | {("defaults", "te", key) for key in TE_RULES}
    if keys not in settable:
        raise UserError(
            f"--set {shown(text)}: {shown('.'.join(map(key_text, keys)))} is not a key of {shown(path)} (settable: name, "
            "description, seeds, observe, defaults.KEY, defaults.te.KEY, and datasets.NAME.KEY, variants.NAME.KEY of its tables)"
        )


def _check(doc: dict, problems: _Problems) -> tuple[str, dict, tuple[RunSpec, ...]]:
    """The sweep's name, targets and runs; each problem found is added to `problems` (and
    then what is returned is incomplete)."""
    problems.known((), doc, TOP_KEYS)
    for required in ("name", "seeds", "datasets", "variants"):
        if required not in doc:
            problems.add((required,), "missing (see the commented example in README.md)")
    name = problems.value(("name",), NAME_RULE, doc["name"]) if "name" in doc else None
    if "description" in doc:
        problems.value(("description",), Rule(str, "a string"), doc["description"])
    seeds = _seeds(doc, problems)
    train_defaults, te_defaults, metric = _defaults(doc, problems)
    datasets = _datasets(doc, problems, metric)
    variants = _variants(doc, problems)
    runs = []
    for dataset, (train, _) in datasets.items():
        expanded = [
            run
            for variant, settings in variants.items()
            for run in _expand_variant(problems, variant, settings, {**train_defaults, **train}, te_defaults)
        ]
        runs += [
            RunSpec(dataset=dataset, seed=seed, variant=variant, te=te, **training)
            for seed in seeds or ()
            for variant, training, te in expanded
        ]
    return name, {dataset: target for dataset, (_, target) in datasets.items()}, tuple(runs)


def _param(problems: _Problems, keys: tuple[str, ...], rule: Rule, value: Any) -> Param | None:
    """A parameter's value, or its list of values (a grid dimension), each checked; for
    `layers`, whose value is a list, a list of lists."""
    listed = isinstance(value, list) and (rule.kind is not list or bool(value) and all(isinstance(v, list) for v in value))
    if listed and not value:
        problems.add(keys, "an empty list; give at least one value")
        return None
    items = value if listed else [value]
    checked = [problems.value(keys, rule, item, index=i if listed else None) for i, item in enumerate(items)]
    if any(item is None for item in checked):
        return None
    if len(set(checked)) < len(checked):
        problems.add(keys, f"values repeat: {shown(value_text(value))}")
        return None
    return Param(tuple(checked), listed)


def _params(problems: _Problems, keys: tuple[str, ...], table: dict, rules: dict[str, Rule]) -> dict[str, Param]:
    params = {key: _param(problems, (*keys, key), rules[key], value) for key, value in table.items() if key in rules}
    return {key: param for key, param in params.items() if param is not None}


def _seeds(doc: dict, problems: _Problems) -> list[int] | None:
    if "seeds" not in doc:
        return None
    seeds = doc["seeds"]
    if not isinstance(seeds, list) or not seeds:
        problems.add(("seeds",), f"expected a non-empty list of integers, got {shown(repr(seeds))}")
        return None
    checked = [problems.value(("seeds",), SEED_RULE, seed, index=i) for i, seed in enumerate(seeds)]
    if None in checked:
        return None
    if len(set(checked)) != len(checked):
        problems.add(("seeds",), f"seeds repeat: {shown(checked)}")
        return None
    return checked


def _defaults(doc: dict, problems: _Problems) -> tuple[dict[str, Param], dict[str, Param], str | None]:
    """[defaults]: training parameters, TE parameters ([defaults.te]) and the metric."""
    defaults = problems.table(("defaults",), doc.get("defaults", {})) or {}
    problems.known(("defaults",), defaults, DEFAULTS_KEYS)
    metric = problems.value(("defaults", "metric"), METRIC_RULE, defaults.get("metric", "test_acc"))
    te = problems.table(("defaults", "te"), defaults.get("te", {})) or {}
    problems.known(("defaults", "te"), te, set(TE_RULES))
    train = _params(problems, ("defaults",), defaults, TRAIN_RULES)
    return train, _params(problems, ("defaults", "te"), te, TE_RULES), metric


def _datasets(doc: dict, problems: _Problems, metric: str | None) -> dict[str, tuple[dict[str, Param], dict]]:
    """[datasets.X]: each data set's training parameters and its target."""
    from tecli.data import DATASET_NAMES

    if "datasets" not in doc:
        return {}
    datasets = problems.table(("datasets",), doc["datasets"])
    if datasets == {}:
        problems.add(("datasets",), "no data sets; add a [datasets.NAME] table")
    checked = {}
    for dataset, table in (datasets or {}).items():
        keys = ("datasets", dataset)
        if dataset not in DATASET_NAMES:
            problems.add(keys, f"unknown data set (known: {', '.join(DATASET_NAMES)})")
        table = problems.table(keys, table)
        if table is None:
            continue
        problems.known(keys, table, DATASET_KEYS)
        target = problems.value((*keys, "target"), TARGET_RULE, table["target"]) if "target" in table else None
        if "metric" in table:
            metric = problems.value((*keys, "metric"), METRIC_RULE, table["metric"])
        checked[dataset] = (_params(problems, keys, table, TRAIN_RULES), {"target": target, "metric": metric})
    return checked


def _variants(doc: dict, problems: _Problems) -> dict[str, tuple[bool, dict[str, Param], dict[str, Param]]]:
    """[variants.X]: each variant's te flag, training parameters and TE parameters."""
    if "variants" not in doc:
        return {}
    variants = problems.table(("variants",), doc["variants"])
    if variants == {}:
        problems.add(("variants",), "no variants; add e.g. [variants.baseline] with te = false")
    checked = {}
    for variant, table in (variants or {}).items():
        keys = ("variants", variant)
        problems.value(keys, NAME_RULE, variant)
        table = problems.table(keys, table)
        if table is None:
            continue
        problems.known(keys, table, VARIANT_KEYS)
        te = table.get("te")
        if not isinstance(te, bool):
            problems.add((*keys, "te"), f"expected true or false, got {shown(repr(te))}")
            continue
        if not te:
            for key in (key for key in table if key in TE_RULES):
                problems.add((*keys, key), "TE parameter on a variant with te = false")
        te_params = _params(problems, keys, table, TE_RULES) if te else {}
        checked[variant] = (te, _params(problems, keys, table, TRAIN_RULES), te_params)
    return checked


def _expand_variant(
    problems: _Problems, variant: str, settings: tuple, train: dict[str, Param], te_defaults: dict[str, Param]
) -> list[tuple[str, dict, TEConfig | None]]:
    """A variant's runs on one data set: (name, training parameters, TE configuration),
    one per combination of the lists among its parameters."""
    te, own_train, own_te = settings
    params = {**train, **own_train, **({**te_defaults, **own_te} if te else {})}
    expanded = []
    for suffix, values in expand(params):
        name = variant + suffix
        if len(name) > VARIANT_NAME_MAX:
            problems.add(
                ("variants", variant),
                f"its runs' names, such as {shown(name)}, are longer than {VARIANT_NAME_MAX} characters; "
                "shorten the variant's name or list fewer parameters",
            )
        training = {key: value for key, value in values.items() if key in TRAIN_RULES}
        te_config = TEConfig(**{key: value for key, value in values.items() if key in TE_RULES}) if te else None
        expanded.append((name, training, te_config))
    return expanded
