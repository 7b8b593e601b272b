"""The research answer: epochs-to-target and seconds-to-target, per data set and variant, over seeds.

Which runs: completed runs only (interrupted and failed runs have incomplete
curves; the report counts them separately). When one run key has several
completed runs (the same `tecli run` twice), the newest counts.

Per run: epochs-to-target is the first epoch whose metric reaches the target;
seconds-to-target the cumulative epoch wall time up to it (TE work and test
evaluation included); also final and best test accuracy, mean epoch time and the
TE share of it.

Per data set x variant: n, n reached, mean +- std and median of the two
to-target measures over the runs that reached, final accuracy mean +- std, and
the epoch-time ratio to the baseline. Each variant is compared with the
baseline variant (named "baseline" unless --baseline says otherwise) on the
seeds where both reached the target: speedup = mean baseline / mean variant,
with a two-sided Wilcoxon signed-rank test on the paired values. Every number
carries the ids of the runs behind it. No torch here.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tecli.conditions import CONDITION_FIELDS
from tecli.db.schema import Epoch, Run, RunAttempt, RunStatus, Sweep
from tecli.errors import UserError
from tecli.sweep.file import METRICS

ALPHA = 0.05
MIN_PAIRS = 3


@dataclass
class Report:
    runs: pd.DataFrame  # one row per counted run: measures and run id
    curves: pd.DataFrame  # one row per epoch of a counted run
    groups: pd.DataFrame  # one row per data set x variant
    targets: dict[str, tuple[float, str] | None]  # data set -> (target, metric)
    statements: list[str]
    excluded: dict[str, int] = field(default_factory=dict)  # status -> runs not counted
    baseline: str = "baseline"
    mixed_conditions: bool = False  # seconds were compared across differing conditions (--mixed-conditions)


def _frame(result) -> pd.DataFrame:
    """A DataFrame from a result; plain tuples are ~20x faster for pandas than Row objects."""
    return pd.DataFrame([tuple(row) for row in result], columns=list(result.keys()))


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


def _load(engine: Engine, keys: set[str] | None, dataset: str | None):
    query = select(
        Run.id.label("run_id"), Run.run_key, Run.dataset, Run.variant, Run.seed, Run.status,
        Run.epochs_planned, Run.config, Sweep.targets, *(getattr(Run, name) for name in CONDITION_FIELDS),
    ).outerjoin(Sweep, Run.sweep_id == Sweep.id)  # fmt: skip
    if keys is not None:
        query = query.where(Run.run_key.in_(keys))
    if dataset is not None:
        query = query.where(Run.dataset == dataset)
    with engine.connect() as connection:  # ordered: a server returns rows in no particular order
        runs = _frame(connection.execute(query.order_by(Run.id)))
        if runs.empty:
            return runs, pd.DataFrame()
        _conditions_as_values(runs)
        _resumed_conditions(runs, connection)
        counted = runs[runs.status == RunStatus.COMPLETED].sort_values("run_id").drop_duplicates("run_key", keep="last")
        epochs = _frame(
            connection.execute(
                select(Epoch.run_id, Epoch.epoch, Epoch.train_acc, Epoch.test_acc, Epoch.seconds, Epoch.te_seconds)
                .join(Run, Run.id == Epoch.run_id)
                .where(Run.status == RunStatus.COMPLETED)
                .order_by(Epoch.run_id, Epoch.epoch)
            )
        )
    return runs.assign(counted=runs.run_id.isin(counted.run_id)), epochs[epochs.run_id.isin(counted.run_id)]


def _conditions_as_values(runs: pd.DataFrame) -> None:
    """Condition columns as plain Python values with None for NULL (pandas would turn a NULL
    thread count into NaN and the others into floats), so that None equals None."""
    for name in CONDITION_FIELDS:
        values = [None if v is None or v != v else (int(v) if name == "threads" else v) for v in runs[name].tolist()]
        runs[name] = pd.Series(values, index=runs.index, dtype=object)


def _resumed_conditions(runs: pd.DataFrame, connection) -> None:
    """A run resumed under other conditions than it started with measured its epochs under
    both: such a condition becomes "a + b" (in attempt order), which equals no plain value."""
    attempts = connection.execute(
        select(RunAttempt.run_id, *(getattr(RunAttempt, name) for name in CONDITION_FIELDS))
        .where(RunAttempt.run_id.in_(runs.run_id.tolist()))
        .order_by(RunAttempt.run_id, RunAttempt.number)
    ).all()
    seen: dict[int, list[tuple]] = {}
    for run_id, *values in attempts:
        seen.setdefault(run_id, []).append(tuple(values))
    position = {run_id: i for i, run_id in zip(runs.index, runs.run_id)}
    for run_id, tuples in seen.items():
        for column, name in enumerate(CONDITION_FIELDS):
            values = list(dict.fromkeys(t[column] for t in tuples))
            if len(values) > 1:
                runs.at[position[run_id], name] = " + ".join(map(str, values))


def condition_text(name: str, value, devices=()) -> str:
    """One condition's value as shown: NULL is "unknown", except a missing GPU name of runs
    that all ran on a CPU, which is "none"."""
    if value is None:
        cpu_only = name == "gpu_name" and devices and not any(str(d).startswith("cuda") for d in devices)
        return "none" if cpu_only else "unknown"
    return str(value)


DEVICE, GPU = CONDITION_FIELDS.index("device"), CONDITION_FIELDS.index("gpu_name")


def condition_keys(runs: pd.DataFrame) -> list[tuple]:
    """Each run's conditions as one tuple, in CONDITION_FIELDS order: equal tuples, equal conditions."""
    return list(zip(*(runs[name].tolist() for name in CONDITION_FIELDS)))


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


def _check_one_configuration(runs: pd.DataFrame) -> None:
    """Seeds of one data set x variant must share every other parameter, or the statistics mix experiments."""
    signature = runs.config.map(lambda c: json.dumps({k: v for k, v in c.items() if k != "seed"}, sort_keys=True))
    for (dataset, variant), group in signature.groupby([runs.dataset, runs.variant]):
        if group.nunique() > 1:
            ids = runs.loc[group.drop_duplicates().index, "run_id"].tolist()
            raise UserError(
                f"{dataset}/{variant} runs have {group.nunique()} different configurations (e.g. runs {ids[0]} and "
                f"{ids[1]}); pass --sweep to compare one sweep's grid, or --variant/--dataset to narrow"
            )


def _targets(
    runs: pd.DataFrame, target: float | None, metric: str, sweep_targets: dict | None
) -> dict[str, tuple[float, str] | None]:
    out: dict[str, tuple[float, str] | None] = {}
    for dataset, group in runs.groupby("dataset", sort=True):
        if target is not None:
            out[dataset] = (target, metric)
            continue
        if sweep_targets is not None:
            t = sweep_targets.get(dataset) or {}
            out[dataset] = (t["target"], t["metric"]) if t.get("target") is not None else None
            continue
        found = {
            (t[dataset]["target"], t[dataset]["metric"])
            for t in group.targets
            if isinstance(t, dict) and t.get(dataset, {}).get("target") is not None
        }
        if len(found) > 1:
            raise UserError(
                f"runs of {dataset} come from sweeps with different targets {sorted(found)}; pass --sweep or --target"
            )
        out[dataset] = found.pop() if found else None
    return out


def per_run(runs: pd.DataFrame, epochs: pd.DataFrame, targets: dict) -> pd.DataFrame:
    """Measures of each counted run (see the module docstring)."""
    counted = runs[runs.counted].set_index("run_id")
    ep = epochs.sort_values(["run_id", "epoch"]).copy()
    ep["cum_seconds"] = ep.groupby("run_id").seconds.cumsum()
    dataset = counted.dataset.reindex(ep.run_id).to_numpy()
    target = np.array([targets[d][0] if targets.get(d) else np.inf for d in dataset])
    use_train = np.array([bool(targets.get(d)) and targets[d][1] == "train_acc" for d in dataset])
    value = np.where(use_train, ep.train_acc, ep.test_acc)
    first = ep[value >= target].groupby("run_id").first()
    stats = ep.groupby("run_id").agg(
        epochs_done=("epoch", "count"),
        final_acc=("test_acc", "last"),
        best_acc=("test_acc", "max"),
        mean_epoch_s=("seconds", "mean"),
        total_s=("seconds", "sum"),
        te_s=("te_seconds", "sum"),
    )
    out = counted[["dataset", "variant", "seed", "epochs_planned"]].join(stats)
    out["epochs_to_target"] = first.epoch.reindex(out.index)
    out["seconds_to_target"] = first.cum_seconds.reindex(out.index)
    out["te_share"] = out.te_s / out.total_s
    out = out.drop(columns=["te_s"]).join(counted[list(CONDITION_FIELDS)])
    return out.reset_index().sort_values(["dataset", "variant", "seed"], ignore_index=True)


def _mean_std_median(values: pd.Series) -> tuple[float, float, float]:
    if values.empty:
        return (math.nan, math.nan, math.nan)
    return (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan, float(values.median()))


def _paired(base: pd.DataFrame, other: pd.DataFrame, column: str) -> tuple[int, int, float, float]:
    """(pairs, pairs that differ, speedup = mean base / mean other, Wilcoxon p) over seeds where both have a value."""
    paired = base.set_index("seed")[column].to_frame("base").join(other.set_index("seed")[column].to_frame("other"), how="inner").dropna()
    n, differ = len(paired), int((paired.base != paired.other).sum())
    if n == 0:
        return 0, 0, math.nan, math.nan
    speedup = float(paired.base.mean() / paired.other.mean())
    if n < MIN_PAIRS or differ == 0:
        return n, differ, speedup, math.nan
    from scipy.stats import wilcoxon

    return n, differ, speedup, float(wilcoxon(paired.base, paired.other).pvalue)


# A group's numbers that compare seconds: NaN where conditions differ (unless --mixed-conditions).
SECONDS_COLUMNS = (
    "seconds_mean", "seconds_std", "seconds_median", "mean_epoch_s", "epoch_time_ratio", "speedup_seconds", "p_seconds",
)  # fmt: skip


def aggregate(measures: pd.DataFrame, baseline: str, mixed_conditions: bool = False) -> pd.DataFrame:
    """One row per data set x variant. Seconds (SECONDS_COLUMNS) are NaN where the group and its
    baseline group were not all measured under one set of conditions, unless `mixed_conditions`;
    `mixed_conditions` (the column) names the conditions that differ, empty when none."""
    keys: dict[tuple[str, str], set[tuple]] = {}
    for dataset, variant, key in zip(measures.dataset, measures.variant, condition_keys(measures)):
        keys.setdefault((dataset, variant), set()).add(key)
    rows = []
    for (dataset, variant), group in measures.groupby(["dataset", "variant"], sort=True):
        reached = group.dropna(subset=["epochs_to_target"])
        base = measures[(measures.dataset == dataset) & (measures.variant == baseline)]
        differences = condition_differences(keys[dataset, variant] | keys.get((dataset, baseline), set()))
        e_mean, e_std, e_median = _mean_std_median(reached.epochs_to_target)
        s_mean, s_std, s_median = _mean_std_median(reached.seconds_to_target)
        row = {
            "dataset": dataset,
            "variant": variant,
            "n": len(group),
            "n_reached": len(reached),
            "epochs_mean": e_mean, "epochs_std": e_std, "epochs_median": e_median,
            "seconds_mean": s_mean, "seconds_std": s_std, "seconds_median": s_median,
            "final_acc_mean": float(group.final_acc.mean()),
            "final_acc_std": float(group.final_acc.std(ddof=1)) if len(group) > 1 else math.nan,
            "mean_epoch_s": float(group.mean_epoch_s.mean()),
            "te_share": float(group.te_share.mean()),
            "epoch_time_ratio": float(group.mean_epoch_s.mean() / base.mean_epoch_s.mean()) if len(base) else math.nan,
            "pairs": 0, "pairs_differing": 0, "speedup_epochs": math.nan, "p_epochs": math.nan,
            "speedup_seconds": math.nan, "p_seconds": math.nan,
            "run_ids": " ".join(str(i) for i in group.run_id),
            "mixed_conditions": "; ".join(differences),
        }  # fmt: skip
        # The group's own conditions as text (several values joined by ", " when its runs differ).
        row.update({name: ", ".join(_distinct(keys[dataset, variant], i)) for i, name in enumerate(CONDITION_FIELDS)})
        if variant != baseline and len(base):
            row["pairs"], row["pairs_differing"], row["speedup_epochs"], row["p_epochs"] = _paired(
                base, group, "epochs_to_target"
            )
            _, _, row["speedup_seconds"], row["p_seconds"] = _paired(base, group, "seconds_to_target")
        if differences and not mixed_conditions:
            row.update(dict.fromkeys(SECONDS_COLUMNS, math.nan))
        rows.append(row)
    return pd.DataFrame(rows)


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


def _statement(row, base_row, target: tuple[float, str] | None, baseline: str, mixed_allowed: bool) -> str:
    text = _comparison(row, base_row, target, baseline, seconds=mixed_allowed or not row.mixed_conditions)
    conditions = conditions_sentence(row.mixed_conditions, mixed_allowed)
    return f"{text} {conditions}" if conditions else text


def _comparison(row, base_row, target: tuple[float, str] | None, baseline: str, seconds: bool) -> str:
    name = f"{row.dataset}/{row.variant}"
    if target is None:
        return f"{name}: no target accuracy recorded for {row.dataset}; pass --target to compare."
    if base_row is None:
        return f"{name}: no {baseline} runs for {row.dataset}; nothing to compare against."
    goal = f"{target[0]:g} {target[1]}"
    missed = []
    for r in (row, base_row):
        if r.n_reached < r.n:
            missed.append(f"{r.n - r.n_reached} of {r.n} {r.variant} runs never reached {goal}")
    missed_text = f" ({'; '.join(missed)})" if missed else ""
    if row.pairs < MIN_PAIRS:
        return (
            f"{name}: only {row.pairs} seed(s) reached {goal} in both {row.variant} and {baseline}"
            f"{missed_text}; too few to support a conclusion."
        )
    seconds_text = (
        f", {row.speedup_seconds:.2f}x in seconds (p = {_p(row.p_seconds)}); "
        f"an epoch costs {row.epoch_time_ratio:.2f}x the baseline's"
        if seconds
        else ""
    )
    text = (
        f"{name} vs {baseline}, {row.pairs} paired seeds, target {goal}: "
        f"speedup {row.speedup_epochs:.2f}x in epochs (Wilcoxon p = {_p(row.p_epochs)})"
        f"{seconds_text}{missed_text}. "
    )
    significant = not math.isnan(row.p_epochs) and row.p_epochs < ALPHA
    if row.pairs_differing == 0:
        text += "Every paired seed reached the target in the same epoch: no difference in epochs."
    elif significant:
        direction = "fewer" if row.speedup_epochs > 1 else "more"
        text += f"{row.variant} needed {direction} epochs to the target (significant at {ALPHA})."
    else:
        text += f"No significant difference in epochs to the target at {ALPHA}"
        # Wilcoxon drops tied pairs; n differing pairs can give p no smaller than 2 / 2^n.
        smallest = 2 / 2**row.pairs_differing
        if smallest >= ALPHA:
            text += (
                f"; with {row.pairs_differing} pairs that differ the smallest attainable p is {smallest:.4f},"
                " so more seeds are needed"
            )
        text += "."
    return text


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3f}"


def build_report(
    engine: Engine,
    sweep: str | None = None,
    dataset: str | None = None,
    variant: str | None = None,
    target: float | None = None,
    metric: str = "test_acc",
    baseline: str = "baseline",
    mixed_conditions: bool = False,
) -> Report:
    """The report; `mixed_conditions` compares seconds even between runs measured under
    different conditions (the statements still name the differences)."""
    if metric not in METRICS:
        raise UserError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if target is not None and not (math.isfinite(target) and 0 < target <= 1):
        raise UserError(f"--target must be an accuracy in (0, 1], got {target}")
    if target is None and metric != "test_acc":
        raise UserError("--metric applies to --target; pass --target too")
    keys, sweep_targets = sweep_scope(engine, sweep) if sweep is not None else (None, None)
    # The baseline is needed for comparisons even when --variant picks another one.
    runs, epochs = _load(engine, keys, dataset)
    if runs.empty or not runs.counted.any():
        raise UserError("no completed runs match; check --sweep/--dataset/--variant or `tecli runs`")
    _check_one_configuration(runs[runs.counted])
    targets = _targets(runs[runs.counted], target, metric, sweep_targets)
    measures = per_run(runs, epochs, targets)
    groups = aggregate(measures, baseline, mixed_conditions)
    if variant is not None:
        if variant not in set(groups.variant):
            raise UserError(f"no completed runs of variant {variant!r}; `tecli runs` lists what is recorded")
        keep = {variant, baseline}
        groups = groups[groups.variant.isin(keep)].reset_index(drop=True)
        measures = measures[measures.variant.isin(keep)].reset_index(drop=True)
    statements = []
    for row in groups.itertuples():
        if row.variant == baseline:
            # The baseline's own runs differ: its row's seconds need a word too.
            if row.mixed_conditions:
                sentence = conditions_sentence(row.mixed_conditions, mixed_conditions)
                statements.append(f"{row.dataset}/{row.variant}: {sentence}")
            continue
        base = groups[(groups.dataset == row.dataset) & (groups.variant == baseline)]
        base_row = next(base.itertuples()) if len(base) else None
        statements.append(_statement(row, base_row, targets.get(row.dataset), baseline, mixed_conditions))
    left_out = runs[~runs.counted]
    if variant is not None:
        left_out = left_out[left_out.variant.isin({variant, baseline})]
    excluded = left_out.status.value_counts().to_dict()
    curves = epochs.merge(measures[["run_id", "dataset", "variant", "seed"]], on="run_id")
    curves["cum_seconds"] = curves.sort_values(["run_id", "epoch"]).groupby("run_id").seconds.cumsum()
    return Report(measures, curves, groups, targets, statements, excluded, baseline, mixed_conditions)
