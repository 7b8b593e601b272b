"""The research answer: epochs-to-target and seconds-to-target, per data set and variant, over seeds.

Which runs: completed runs only (interrupted and failed runs have incomplete
curves; the report counts them separately). When one run key has several
completed runs (the same `tecli run` twice), the newest counts.

Per run: epochs-to-target is the first epoch whose metric reaches the target;
seconds-to-target the cumulative epoch time up to it (TE work and test evaluation
included) on the report's clock: wall time (the default) or the process's CPU time
(`--clock cpu`, all threads; recorded since schema 0004); also final and best test
accuracy, mean epoch time and the TE share of it (TE seconds over wall seconds, on
either clock). A run with an epoch recorded without CPU time has no seconds on the
CPU clock, and neither do its group and the comparisons it takes part in: the
report lists such runs rather than guessing.

Per data set x variant: n, n reached, mean +- std and median of the two
to-target measures over the runs that reached, final accuracy mean +- std, and
the epoch-time ratio to the baseline. Each variant is compared with the
baseline variant (named "baseline" unless --baseline says otherwise) on the
seeds where both reached the target: speedup = mean baseline / mean variant,
with a two-sided Wilcoxon signed-rank test on the paired values, and the median of
the per-seed speedups baseline / variant with its percentile bootstrap 95 %
interval over seed pairs (tecli.report.stats). Where a data set has several
variants, Holm's adjustment of their p-values (per data set and measure, over the
variants that have a test) decides what the statements call significant. Every
number carries the ids of the runs behind it. No torch here, nor pandas, NumPy or
SciPy (about 0.9 s of imports): tecli.report.arithmetic, .wilcoxon and .stats
compute in plain Python.

Feedback diagnostics: an epoch of a TE run is inert when its feedback moved no
factor from 1 (factor_dev_max = 0); NULL (recorded before diagnostics were) is
unknown. A TE group is flagged when more than half of all its epochs are known to
be inert: it then trained as its baseline did, and its comparison says little
about TE feedback.

Observed runs (`tecli run --observe`): the per-variant means of their observations per
epoch and layer (tecli.report.observed, imported only when such rows exist).

Conditions of measurement (tecli.conditions: device, GPU name, threads, CPU
model, code version) decide what seconds mean. A group's seconds (to target,
mean epoch time, epoch-time ratio, speedup in seconds and its p) are computed
only when all runs of the group and of its baseline group share one set of
conditions; otherwise they are NaN, the group's `mixed_conditions` names the
conditions that differ and its statement says so (`mixed_conditions=True`,
`--mixed-conditions`, computes them anyway and still names the differences).
A NULL condition (rows recorded before conditions were) is the value "unknown",
equal to itself. Epochs-to-target does not depend on conditions.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from itertools import groupby
from operator import itemgetter
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tecli.conditions import CONDITION_FIELDS
from tecli.db.schema import Epoch, Observation, Run, RunAttempt, RunStatus, Sweep
from tecli.errors import UserError
from tecli.report.arithmetic import group_sum, mean, median, running_sums, std
from tecli.report.grid import grid_datasets
from tecli.report.stats import holm, median_interval
from tecli.report.wilcoxon import wilcoxon_p
from tecli.sweep.file import METRICS

ALPHA = 0.05
MIN_PAIRS = 3
CLOCKS = ("wall", "cpu")  # --clock: what epoch seconds are, Epoch.seconds or Epoch.cpu_seconds
TE_COLUMNS = ("lam", "mode", "reach")  # a TE run's parameters that the grid view and the λ plot show


@dataclass
class Curve:
    """A counted run's test accuracy and seconds on the report's clock, epoch by epoch."""

    run_id: int
    dataset: str
    variant: str
    test_acc: tuple[float, ...]
    seconds: tuple[float, ...] | None  # None: the clock was not recorded for every epoch

    @cached_property
    def cum_seconds(self) -> list[float]:
        """The cumulative seconds at each epoch's end."""
        return running_sums(self.seconds)


@dataclass
class Report:
    runs: list[dict]  # one per counted run: measures and run id, by data set, variant and seed
    curves: list[Curve]  # one per counted run, by run id
    groups: list[dict]  # one per data set x variant, sorted
    targets: dict[str, tuple[float, str] | None]  # data set -> (target, metric)
    statements: list[str]
    excluded: dict[str, int] = field(default_factory=dict)  # status -> runs not counted
    baseline: str = "baseline"
    mixed_conditions: bool = False  # seconds were compared across differing conditions (--mixed-conditions)
    clock: str = "wall"  # what seconds are: "wall" time or process "cpu" time
    unclocked: list[int] = field(default_factory=list)  # counted runs with epochs lacking the clock: no seconds
    grid: list[str] = field(default_factory=list)  # data sets shown in the grid view (tecli.report.grid)
    observed: list[dict] = field(default_factory=list)  # per-variant observation means (tecli.report.observed)


def sweep_scope(engine: Engine, name: str) -> tuple[set[str], dict]:
    """Run keys of the newest sweep called `name` (its grid, re-expanded from the recorded
    file) and its targets. A grid run that was already done elsewhere (another sweep, or
    `tecli run` with the same specification) was skipped, not re-recorded, so runs are
    selected by key rather than by the sweep they were recorded under.
    """
    from tecli.sweep.file import parse_sweep

    with Session(engine) as session:
        row = session.scalars(select(Sweep).where(Sweep.name == name).order_by(Sweep.id.desc())).first()
        if row is None:
            raise UserError(f"no sweep named {name!r} in the database; `tecli runs` shows the sweeps of recorded runs")
        grid = parse_sweep(row.source, Path(f"<sweep {name}>"))
        return {spec.run_key() for spec in grid.runs}, row.targets


def _load(
    engine: Engine, keys: set[str] | None, dataset: str | None, clock: str = "wall"
) -> tuple[list[dict], dict[int, list[tuple]]]:
    """The matching runs in id order, each with `counted` set, and the epochs of the counted ones: run id ->
    (run id, epoch, train_acc, test_acc, seconds, te_seconds, factor_dev_max[, cpu_seconds]) rows in epoch order,
    cpu_seconds on the CPU clock."""
    query = select(
        Run.id.label("run_id"), Run.run_key, Run.dataset, Run.variant, Run.seed, Run.status,
        Run.epochs_planned, Run.config, Sweep.targets, *(getattr(Run, name) for name in CONDITION_FIELDS),
    ).outerjoin(Sweep, Run.sweep_id == Sweep.id)  # fmt: skip
    if keys is not None:
        query = query.where(Run.run_key.in_(keys))
    if dataset is not None:
        query = query.where(Run.dataset == dataset)
    with engine.connect() as connection:  # ordered: a server returns rows in no particular order
        runs = [row._asdict() for row in connection.execute(query.order_by(Run.id))]
        if not runs:
            return runs, {}
        _resumed_conditions(runs, connection)
        newest = {run["run_key"]: run["run_id"] for run in runs if run["status"] == RunStatus.COMPLETED}
        counted = set(newest.values())
        # IN rather than a join: SQLite then reads the epochs in the order of their (run_id, epoch) key, unsorted
        completed = select(Run.id).where(Run.status == RunStatus.COMPLETED)
        rows = connection.execute(
            select(
                Epoch.run_id, Epoch.epoch, Epoch.train_acc, Epoch.test_acc, Epoch.seconds, Epoch.te_seconds,
                Epoch.factor_dev_max, *([Epoch.cpu_seconds] if clock == "cpu" else []),
            )  # fmt: skip
            .where(Epoch.run_id.in_(completed))
            .order_by(Epoch.run_id, Epoch.epoch)
        ).all()
    for run in runs:
        run["counted"] = run["run_id"] in counted
    return runs, {run_id: list(group) for run_id, group in groupby(rows, itemgetter(0)) if run_id in counted}


def _resumed_conditions(runs: list[dict], connection) -> None:
    """A run resumed under other conditions than it started with measured its epochs under
    both: such a condition becomes "a + b" (in attempt order), which equals no plain value."""
    by_id = {run["run_id"]: run for run in runs}
    resumed = select(RunAttempt.run_id).group_by(RunAttempt.run_id).having(func.count() > 1)
    attempts = connection.execute(
        select(RunAttempt.run_id, *(getattr(RunAttempt, name) for name in CONDITION_FIELDS))
        .where(RunAttempt.run_id.in_(resumed))
        .order_by(RunAttempt.run_id, RunAttempt.number)
    ).all()
    seen: dict[int, list[tuple]] = {}
    for run_id, *values in attempts:
        if run_id in by_id:
            seen.setdefault(run_id, []).append(tuple(values))
    for run_id, tuples in seen.items():
        for column, name in enumerate(CONDITION_FIELDS):
            values = list(dict.fromkeys(t[column] for t in tuples))
            if len(values) > 1:
                by_id[run_id][name] = " + ".join(map(str, values))


def _grouped(rows: list[dict], *names: str) -> dict[tuple, list[dict]]:
    """Rows by their values of `names`, in sorted order; each group keeps the rows' order."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[name] for name in names), []).append(row)
    return dict(sorted(groups.items()))


def condition_text(name: str, value, devices=()) -> str:
    """One condition's value as shown: NULL is "unknown", except a missing GPU name of runs
    that all ran on a CPU, which is "none"."""
    if value is None:
        cpu_only = name == "gpu_name" and devices and not any(str(d).startswith("cuda") for d in devices)
        return "none" if cpu_only else "unknown"
    return str(value)


DEVICE, GPU = CONDITION_FIELDS.index("device"), CONDITION_FIELDS.index("gpu_name")


def condition_keys(runs: list[dict]) -> list[tuple]:
    """Each run's conditions as one tuple, in CONDITION_FIELDS order: equal tuples, equal conditions."""
    return [tuple(run[name] for name in CONDITION_FIELDS) for run in runs]


def _distinct(keys: set[tuple], index: int) -> list[str]:
    """The distinct values of one condition among `keys` (NULL is one value), as text, in order:
    numbers by value, unknown last."""
    # numbers before text (a resumed run's "1 + 2"), each in order; unknown last
    unique = sorted({k[index] for k in keys}, key=lambda v: (v is None, isinstance(v, str), v if isinstance(v, (int, float)) else str(v)))
    devices = {k[DEVICE] for k in keys if k[GPU] is None} if index == GPU else ()
    return [condition_text(CONDITION_FIELDS[index], v, devices) for v in unique]


def condition_differences(keys: set[tuple]) -> list[str]:
    """Each condition on which `keys` differ, with its values: e.g. "threads (1, 2)"."""
    if len(keys) < 2:
        return []
    out = []
    for index, name in enumerate(CONDITION_FIELDS):
        values = _distinct(keys, index)
        if len(values) > 1:
            out.append(f"{name} ({', '.join(values)})")
    return out


def _check_one_configuration(runs: list[dict]) -> None:
    """Seeds of one data set x variant must share every other parameter, or the statistics mix experiments."""
    for (dataset, variant), group in _grouped(runs, "dataset", "variant").items():
        first_of: dict[str, int] = {}  # configuration without the seed -> first run id that has it
        for run in group:
            signature = json.dumps({k: v for k, v in run["config"].items() if k != "seed"}, sort_keys=True)
            first_of.setdefault(signature, run["run_id"])
        if len(first_of) > 1:
            ids = list(first_of.values())
            raise UserError(
                f"{dataset}/{variant} runs have {len(ids)} different configurations (e.g. runs {ids[0]} and "
                f"{ids[1]}); pass --sweep to compare one sweep's grid, or --variant/--dataset to narrow"
            )


def _targets(
    runs: list[dict], target: float | None, metric: str, sweep_targets: dict | None
) -> dict[str, tuple[float, str] | None]:
    out: dict[str, tuple[float, str] | None] = {}
    for (dataset,), group in _grouped(runs, "dataset").items():
        if target is not None:
            out[dataset] = (target, metric)
            continue
        if sweep_targets is not None:
            t = sweep_targets.get(dataset) or {}
            out[dataset] = (t["target"], t["metric"]) if t.get("target") is not None else None
            continue
        found = {
            (t[dataset]["target"], t[dataset]["metric"])
            for t in (run["targets"] for run in group)
            if isinstance(t, dict) and t.get(dataset, {}).get("target") is not None
        }
        if len(found) > 1:
            raise UserError(
                f"runs of {dataset} come from sweeps with different targets {sorted(found)}; pass --sweep or --target"
            )
        out[dataset] = found.pop() if found else None
    return out


def per_run(runs: list[dict], epochs: dict[int, list[tuple]], targets: dict) -> tuple[list[dict], list[Curve]]:
    """Measures of each counted run (see the module docstring), sorted by data set, variant and
    seed, and the learning curves, in the runs' order."""
    measures, curves = [], []
    for run in runs:
        _, epoch, train_acc, test_acc, wall, te_seconds, dev_max, *cpu = zip(*epochs[run["run_id"]])
        seconds = cpu[0] if cpu else wall
        clocked = None not in seconds
        total = group_sum(seconds) if clocked else math.nan
        wall_total = group_sum(wall)
        threshold, metric = targets.get(run["dataset"]) or (math.inf, "test_acc")
        reached = next((i for i, v in enumerate(train_acc if metric == "train_acc" else test_acc) if v >= threshold), None)
        te = run["config"].get("te")
        measures.append({
            **{name: run[name] for name in ("run_id", "dataset", "variant", "seed", "epochs_planned")},
            "epochs_done": len(epoch),
            "final_acc": test_acc[-1],
            "best_acc": max(test_acc),
            "mean_epoch_s": total / len(epoch),
            "total_s": total,
            "epochs_to_target": None if reached is None else epoch[reached],
            "seconds_to_target": None if reached is None or not clocked else running_sums(seconds[: reached + 1])[-1],
            "te_share": group_sum(te_seconds) / wall_total if wall_total else math.nan,
            "clocked": clocked,
            # Feedback diagnostics (None for a baseline run): epochs whose feedback moved no factor, and
            # epochs that recorded whether it did.
            "epochs_inert": None if te is None else sum(d == 0 for d in dev_max),
            "epochs_diagnosed": None if te is None else sum(d is not None for d in dev_max),
            **{name: None if te is None else te[name] for name in TE_COLUMNS},
            **{name: run[name] for name in CONDITION_FIELDS},
        })  # fmt: skip
        curves.append(Curve(run["run_id"], run["dataset"], run["variant"], test_acc, seconds if clocked else None))
    measures.sort(key=lambda m: (m["dataset"], m["variant"], m["seed"]))
    return measures, curves


def _mean_std_median(values: list) -> tuple[float, float, float]:
    if not values:
        return (math.nan, math.nan, math.nan)
    return (mean(values), std(values), median(values))


def _column(rows: list[dict], name: str) -> list:
    return [row[name] for row in rows]


def _paired(base: list[dict], other: list[dict], column: str) -> tuple[int, int, float, float, float, float, float]:
    """Over seeds where both have a value: (pairs, pairs that differ, speedup = mean base / mean other,
    Wilcoxon p, median of the per-seed speedups base / other, its bootstrap interval's lower and upper end).
    The p needs MIN_PAIRS pairs and a difference; the interval MIN_PAIRS pairs."""
    other_by_seed = {row["seed"]: row[column] for row in other}
    pairs = [
        (row[column], other_by_seed[row["seed"]])
        for row in base
        if row[column] is not None and other_by_seed.get(row["seed"]) is not None
    ]
    if not pairs:
        return 0, 0, math.nan, math.nan, math.nan, math.nan, math.nan
    base_values, other_values = zip(*pairs)
    n, differ = len(pairs), sum(b != o for b, o in pairs)
    speedup = mean(base_values) / mean(other_values)
    speedups = [b / o for b, o in pairs]
    if n < MIN_PAIRS:
        return n, differ, speedup, math.nan, median(speedups), math.nan, math.nan
    p = wilcoxon_p(base_values, other_values) if differ else math.nan
    return n, differ, speedup, p, median(speedups), *median_interval(speedups)


# A group's numbers that compare seconds: NaN where conditions differ (unless --mixed-conditions)
# and where a run of the group or of its baseline group lacks the report's clock.
SECONDS_COLUMNS = (
    "seconds_mean", "seconds_std", "seconds_median", "mean_epoch_s", "epoch_time_ratio", "speedup_seconds", "p_seconds",
    "median_speedup_seconds", "median_speedup_seconds_low", "median_speedup_seconds_high",
)  # fmt: skip


def _paired_columns(measure: str, values: tuple) -> dict:
    """_paired's numbers after pairs and pairs_differing, by column name, e.g. speedup_epochs."""
    speedup, p, middle, low, high = values
    return {
        f"speedup_{measure}": speedup, f"p_{measure}": p, f"median_speedup_{measure}": middle,
        f"median_speedup_{measure}_low": low, f"median_speedup_{measure}_high": high,
    }  # fmt: skip


def aggregate(measures: list[dict], baseline: str, mixed_conditions: bool = False) -> list[dict]:
    """One row per data set x variant. Seconds (SECONDS_COLUMNS) are NaN where the group and its
    baseline group were not all measured under one set of conditions, unless `mixed_conditions`;
    `mixed_conditions` (the column) names the conditions that differ, empty when none."""
    groups = _grouped(measures, "dataset", "variant")
    keys = {key: set(condition_keys(group)) for key, group in groups.items()}
    rows = []
    for (dataset, variant), group in groups.items():
        reached = [m for m in group if m["epochs_to_target"] is not None]
        base = groups.get((dataset, baseline), [])
        differences = condition_differences(keys[dataset, variant] | keys.get((dataset, baseline), set()))
        clocked = all(_column(group + base, "clocked"))
        e_mean, e_std, e_median = _mean_std_median(_column(reached, "epochs_to_target"))
        s_mean, s_std, s_median = _mean_std_median(_column(reached, "seconds_to_target") if clocked else [])
        mean_epoch_s = mean(_column(group, "mean_epoch_s"))
        te = group[0]["epochs_inert"] is not None  # a TE group (one configuration per group)
        epochs_total = sum(_column(group, "epochs_done"))
        inert = sum(_column(group, "epochs_inert")) if te else None
        row = {
            "dataset": dataset,
            "variant": variant,
            "n": len(group),
            "n_reached": len(reached),
            "epochs_mean": e_mean, "epochs_std": e_std, "epochs_median": e_median,
            "seconds_mean": s_mean, "seconds_std": s_std, "seconds_median": s_median,
            "final_acc_mean": mean(_column(group, "final_acc")),
            "final_acc_std": std(_column(group, "final_acc")),
            "mean_epoch_s": mean_epoch_s,
            "te_share": mean(_column(group, "te_share")),
            "epoch_time_ratio": mean_epoch_s / mean(_column(base, "mean_epoch_s")) if base else math.nan,
            "pairs": 0, "pairs_differing": 0,
            **_paired_columns("epochs", (math.nan,) * 5), "p_epochs_holm": math.nan,
            **_paired_columns("seconds", (math.nan,) * 5), "p_seconds_holm": math.nan,
            "holm_variants": 0,  # variants compared with the baseline on this data set
            "epochs_total": epochs_total,
            "epochs_inert": inert,
            "epochs_diagnosed": sum(_column(group, "epochs_diagnosed")) if te else None,
            "inert": te and 2 * inert > epochs_total,  # known inert in most epochs (unknown epochs count as not)
            **{name: group[0][name] for name in TE_COLUMNS},
            "run_ids": " ".join(str(m["run_id"]) for m in group),
            "clocked": clocked,
            "mixed_conditions": "; ".join(differences),
        }  # fmt: skip
        # The group's own conditions as text (several values joined by ", " when its runs differ).
        row.update({name: ", ".join(_distinct(keys[dataset, variant], i)) for i, name in enumerate(CONDITION_FIELDS)})
        if variant != baseline and base:
            row["pairs"], row["pairs_differing"], *epochs = _paired(base, group, "epochs_to_target")
            row.update(_paired_columns("epochs", epochs))
            if clocked:
                row.update(_paired_columns("seconds", _paired(base, group, "seconds_to_target")[2:]))
        if (differences and not mixed_conditions) or not clocked:
            row.update(dict.fromkeys(SECONDS_COLUMNS, math.nan))
        rows.append(row)
    _adjust(rows, baseline)
    return rows


def _adjust(rows: list[dict], baseline: str) -> None:
    """Holm-adjusted p-values across the variants compared with the baseline, per data set and measure."""
    for _, group in groupby(rows, itemgetter("dataset")):  # rows come sorted by data set
        group = list(group)
        if not any(row["variant"] == baseline for row in group):
            continue
        compared = [row for row in group if row["variant"] != baseline]
        for measure in ("epochs", "seconds"):
            for row, p in zip(compared, holm([row[f"p_{measure}"] for row in compared])):
                row[f"p_{measure}_holm"] = p
                row["holm_variants"] = len(compared)


def _and_list(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def conditions_sentence(mixed: str, allowed: bool) -> str:
    """What a group's statement says about its differing conditions ("" when none differ)."""
    if not mixed:
        return ""
    named = _and_list(mixed.split("; "))
    if allowed:
        return f"Seconds compare runs that differ in {named} (--mixed-conditions); read them with care."
    return f"Seconds are not compared: runs differ in {named}; pass --mixed-conditions to compare them anyway."


def _statement(row: dict, base_row: dict | None, target: tuple[float, str] | None, baseline: str, mixed_allowed: bool) -> str:
    seconds = (mixed_allowed or not row["mixed_conditions"]) and row["clocked"]
    text = _comparison(row, base_row, target, baseline, seconds)
    conditions = conditions_sentence(row["mixed_conditions"], mixed_allowed)
    return f"{text} {conditions}" if conditions else text


def _comparison(row: dict, base_row: dict | None, target: tuple[float, str] | None, baseline: str, seconds: bool) -> str:
    name = f"{row['dataset']}/{row['variant']}"
    if target is None:
        return f"{name}: no target accuracy recorded for {row['dataset']}; pass --target to compare."
    if base_row is None:
        return f"{name}: no {baseline} runs for {row['dataset']}; nothing to compare against."
    goal = f"{target[0]:g} {target[1]}"
    missed = []
    for r in (row, base_row):
        if r["n_reached"] < r["n"]:
            missed.append(f"{r['n'] - r['n_reached']} of {r['n']} {r['variant']} runs never reached {goal}")
    missed_text = f" ({'; '.join(missed)})" if missed else ""
    if row["pairs"] < MIN_PAIRS:
        return (
            f"{name}: only {row['pairs']} seed(s) reached {goal} in both {row['variant']} and {baseline}"
            f"{missed_text}; too few to support a conclusion."
        )
    seconds_text = (
        f", {row['speedup_seconds']:.2f}x in seconds (p = {_p(row['p_seconds'])}); "
        f"an epoch costs {row['epoch_time_ratio']:.2f}x the baseline's"
        if seconds
        else ""
    )
    several = row["holm_variants"] > 1 and not math.isnan(row["p_epochs"])
    holm_text = f", Holm-adjusted across the data set's {row['holm_variants']} variants {_p(row['p_epochs_holm'])}" if several else ""
    text = (
        f"{name} vs {baseline}, {row['pairs']} paired seeds, target {goal}: "
        f"speedup {row['speedup_epochs']:.2f}x in epochs (Wilcoxon p = {_p(row['p_epochs'])}{holm_text}; "
        f"median per seed {row['median_speedup_epochs']:.2f}x, 95 % bootstrap interval "
        f"{row['median_speedup_epochs_low']:.2f} to {row['median_speedup_epochs_high']:.2f})"
        f"{seconds_text}{missed_text}. "
    )
    # Holm's p: with one variant it is the p itself.
    significant = not math.isnan(row["p_epochs_holm"]) and row["p_epochs_holm"] < ALPHA
    if row["pairs_differing"] == 0:
        text += "Every paired seed reached the target in the same epoch: no difference in epochs."
    elif significant:
        direction = "fewer" if row["speedup_epochs"] > 1 else "more"
        adjusted = " after Holm's adjustment" if row["holm_variants"] > 1 else ""
        text += f"{row['variant']} needed {direction} epochs to the target (significant at {ALPHA}{adjusted})."
    else:
        text += f"No significant difference in epochs to the target at {ALPHA}"
        # Wilcoxon drops tied pairs; n differing pairs can give p no smaller than 2 / 2^n.
        smallest = 2 / 2 ** row["pairs_differing"]
        if smallest >= ALPHA:
            text += (
                f"; with {row['pairs_differing']} pairs that differ the smallest attainable p is {smallest:.4f},"
                " so more seeds are needed"
            )
        text += "."
    return text


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3f}"


def inert_statement(row: dict, baseline: str) -> str | None:
    """The flag of a TE group whose feedback was known to be inert in most of its epochs; None otherwise."""
    if not row["inert"]:
        return None
    return (
        f"{row['dataset']}/{row['variant']}: the TE feedback was inert (no factor moved from 1, factor_dev_max = 0) "
        f"in {row['epochs_inert']} of {row['epochs_total']} epochs, so these runs trained as {baseline} runs do "
        "in those epochs; their comparison says little about TE feedback."
    )


def _observed(engine: Engine, measures: list[dict]) -> list[dict]:
    """The per-variant means of the runs' observations; [] (without importing their code) when none observed."""
    ids = [m["run_id"] for m in measures]
    with engine.connect() as connection:
        if connection.execute(select(Observation.id).where(Observation.run_id.in_(ids)).limit(1)).first() is None:
            return []
    from tecli.report import observed

    return observed.variant_means(measures, observed.load(engine, ids))


def build_report(
    engine: Engine,
    sweep: str | None = None,
    dataset: str | None = None,
    variant: str | None = None,
    target: float | None = None,
    metric: str = "test_acc",
    baseline: str = "baseline",
    mixed_conditions: bool = False,
    clock: str = "wall",
    grid: bool = False,
) -> Report:
    """The report; `mixed_conditions` compares seconds even between runs measured under
    different conditions (the statements still name the differences); `clock` is what seconds
    are, "wall" or "cpu"; `grid` shows the grid view for every data set (tecli.report.grid)."""
    if metric not in METRICS:
        raise UserError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if clock not in CLOCKS:
        raise UserError(f"--clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    if target is not None and not (math.isfinite(target) and 0 < target <= 1):
        raise UserError(f"--target must be an accuracy in (0, 1], got {target}")
    if target is None and metric != "test_acc":
        raise UserError("--metric applies to --target; pass --target too")
    keys, sweep_targets = sweep_scope(engine, sweep) if sweep is not None else (None, None)
    # The baseline is needed for comparisons even when --variant picks another one.
    runs, epochs = _load(engine, keys, dataset, clock)
    counted = [run for run in runs if run["counted"]]
    if not counted:
        raise UserError("no completed runs match; check --sweep/--dataset/--variant or `tecli runs`")
    _check_one_configuration(counted)
    targets = _targets(counted, target, metric, sweep_targets)
    measures, curves = per_run(counted, epochs, targets)
    groups = aggregate(measures, baseline, mixed_conditions)
    left_out = [run for run in runs if not run["counted"]]
    if variant is not None:
        if variant not in {g["variant"] for g in groups}:
            raise UserError(f"no completed runs of variant {variant!r}; `tecli runs` lists what is recorded")
        keep = {variant, baseline}
        groups, measures, left_out = ([row for row in rows if row["variant"] in keep] for rows in (groups, measures, left_out))
        curves = [curve for curve in curves if curve.variant in keep]
    statements = []
    for row in groups:
        if row["variant"] == baseline:
            # The baseline's own runs differ: its row's seconds need a word too.
            if row["mixed_conditions"]:
                sentence = conditions_sentence(row["mixed_conditions"], mixed_conditions)
                statements.append(f"{row['dataset']}/{row['variant']}: {sentence}")
        else:
            base_row = next((g for g in groups if g["dataset"] == row["dataset"] and g["variant"] == baseline), None)
            statements.append(_statement(row, base_row, targets.get(row["dataset"]), baseline, mixed_conditions))
        flag = inert_statement(row, baseline)
        if flag:
            statements.append(flag)
    excluded = dict(Counter(run["status"] for run in left_out).most_common())  # most first, ties in run order
    unclocked = [m["run_id"] for m in sorted(measures, key=itemgetter("run_id")) if not m["clocked"]]
    return Report(
        measures, curves, groups, targets, statements, excluded, baseline, mixed_conditions, clock, unclocked,
        grid_datasets(groups, baseline, grid), _observed(engine, measures),
    )  # fmt: skip
