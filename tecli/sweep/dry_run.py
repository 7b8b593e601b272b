"""`tecli sweep FILE --dry-run` as a library call: the grid's size, the plan against the
database and an estimate of the training time left; nothing is written.

    from tecli.sweep.dry_run import dry_run

    preview = dry_run("experiments.toml", db="tecli.db", overrides=["seeds=[0,1]"])
    print(preview.grid_text(), preview.time_left_text(), sep="\\n")

The database is opened read-only (SQLite mode=ro, a read-only PostgreSQL transaction)
and never created or upgraded: one that does not exist yet, or has no tecli tables, is
a plan with nothing done; one at an older schema is read as it is. Running runs whose
owner is gone count as interrupted, as the sweep itself would mark them.

The estimate: for each data set and variant with runs left, its epochs left (a resumed
run's from its checkpoint) × the median of the epoch seconds recorded for that data
set and variant name in the database, else of all the data set's recorded epochs
(another variant's: TE costs a few percent per epoch). Runs trained one at a time at
the recorded speed; with --workers N expect roughly 1/N of it when the cores allow.
Runs that stop at a test accuracy (stop_at) may end sooner: their estimate is a bound
("at most").
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, inspect, select
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tecli.db.recording import dead_runs
from tecli.db.schema import Epoch, Run
from tecli.db.store import database_url, describe
from tecli.errors import UserError, first_line
from tecli.sweep.file import SweepSpec, load_sweep
from tecli.sweep.plan import PastRun, PlannedRun, history, plan_from
from tecli.sweep.run import TO_TRAIN


@dataclass(frozen=True)
class Estimate:
    """Training time left for one data set and variant."""

    dataset: str
    variant: str
    runs: int
    epochs_left: int
    epoch_seconds: float | None  # median recorded epoch seconds; None: nothing recorded to go by
    basis: str | None  # "variant": its own recorded epochs; "data set": all of the data set's
    stops_early: bool = False  # its runs stop at a test accuracy (stop_at): epochs_left is the most they train

    @property
    def seconds(self) -> float | None:
        return None if self.epoch_seconds is None else self.epochs_left * self.epoch_seconds


@dataclass(frozen=True)
class DryRun:
    spec: SweepSpec
    planned: list[PlannedRun]
    estimates: list[Estimate]  # per data set and variant with runs left, in the grid's order

    def grid(self) -> tuple[dict[str, int], int]:
        """Variants per data set (lists in [datasets.X] may make them differ), and seeds."""
        variants: dict[str, set[str]] = defaultdict(set)
        for spec in self.spec.runs:
            variants[spec.dataset].add(spec.variant)
        return {dataset: len(names) for dataset, names in variants.items()}, len({s.seed for s in self.spec.runs})

    def grid_text(self) -> str:
        """grid: 2 data sets × 5 seeds × 4 variants = 40 runs"""
        variants, seeds = self.grid()
        runs = _count(len(self.spec.runs), "run")
        if len(set(variants.values())) == 1:
            each = next(iter(variants.values()))
            counts = f"{_count(len(variants), 'data set')} × {_count(seeds, 'seed')} × {_count(each, 'variant')}"
            return f"grid: {counts} = {runs}"
        per_dataset = " + ".join(f"{dataset} {count}" for dataset, count in variants.items())
        return f"grid: {_count(seeds, 'seed')} × ({per_dataset} variants) = {runs}"

    def seconds_left(self) -> float | None:
        """The estimate's total over what could be estimated; None if nothing could."""
        known = [e.seconds for e in self.estimates if e.seconds is not None]
        return sum(known) if known else None

    def time_left_text(self) -> str:
        """The estimate: a total line, then one line per data set and variant."""
        if not self.estimates:
            return "time left: nothing left to train"
        total = self.seconds_left()
        if total is None:
            return "time left: no recorded epochs to estimate from"
        partial = " for what has recorded epochs" if any(e.seconds is None for e in self.estimates) else ""
        bound = "at most" if any(e.stops_early for e in self.estimates) else "about"
        lines = [
            f"time left: {bound} {duration(total)} of training{partial}, one run at a time "
            "(median recorded epoch seconds × epochs left)"
            + ("; runs with stop_at end once they reach it, maybe sooner" if bound == "at most" else "")
        ]
        for e in self.estimates:
            most = "at most " if e.stops_early else ""
            head = f"  {e.dataset}/{e.variant}: {_count(e.runs, 'run')}, {most}{_count(e.epochs_left, 'epoch')}"
            if e.epoch_seconds is None:
                lines.append(f"{head}, no recorded epochs to estimate from")
            else:
                basis = f" (median of all {e.dataset} epochs)" if e.basis == "data set" else ""
                lines.append(f"{head} × {e.epoch_seconds:.2f} s{basis} = {duration(e.seconds)}")
        return "\n".join(lines)


def dry_run(
    file: str | os.PathLike,
    db: str | os.PathLike | None = None,
    *,
    overrides: Sequence[str] = (),
    retry_failed: bool = False,
    restart: bool = False,
) -> DryRun:
    """The sweep's plan and time left, as `tecli sweep FILE --dry-run` prints it (UserError
    or SweepFileError for a bad file, --set or --db)."""
    spec = load_sweep(Path(file), overrides)
    past, medians = _recorded(database_url(db), spec)
    planned = plan_from(spec, past, retry_failed, not restart)
    return DryRun(spec, planned, _estimates(planned, medians))


def _recorded(url: URL, spec: SweepSpec) -> tuple[dict[str, list[PastRun]], dict]:
    """What the database holds for the sweep: each key's recorded runs, and the median
    epoch seconds of its data sets (_epoch_seconds). Nothing for a database not there yet."""
    engine = _read_only(url)
    if engine is None:
        return {}, {}
    try:
        tables = inspect(engine)
        if not tables.has_table("runs"):
            return {}, {}
        owners = "boot_id" in {column["name"] for column in tables.get_columns("runs")}  # schema 0002 on
        dead = dead_runs(engine) if owners else frozenset()
        past = history(engine, [s.run_key() for s in spec.runs], tables.has_table("checkpoints"), dead)
        return past, _epoch_seconds(engine, {s.dataset for s in spec.runs})
    except DBAPIError as error:
        problem = first_line(error.orig)
        raise UserError(f"cannot read the database {describe(url)}: {problem}; check --db or TECLI_DB") from None
    finally:
        engine.dispose()


def _read_only(url: URL) -> Engine | None:
    """An engine that cannot write to the database, or None where it does not exist yet."""
    if url.get_backend_name() == "sqlite":
        path = Path(url.database)
        if not path.exists():
            return None
        read_only = URL.create("sqlite", database=path.as_uri(), query={"mode": "ro", "uri": "true"})
        return create_engine(read_only, connect_args={"timeout": 30})
    return create_engine(url).execution_options(postgresql_readonly=True)


def _epoch_seconds(engine: Engine, datasets: set[str]) -> dict[tuple[str, str | None], float]:
    """Median recorded epoch seconds per (data set, variant), and per (data set, None) over
    all its variants."""
    query = select(Run.dataset, Run.variant, Epoch.seconds).join(Epoch, Epoch.run_id == Run.id)
    query = query.where(Run.dataset.in_(datasets))
    seconds: dict[tuple[str, str | None], list[float]] = defaultdict(list)
    with Session(engine) as session:
        for dataset, variant, value in session.execute(query):
            seconds[dataset, variant].append(value)
            seconds[dataset, None].append(value)
    return {group: statistics.median(values) for group, values in seconds.items()}


def _estimates(planned: list[PlannedRun], medians: dict[tuple[str, str | None], float]) -> list[Estimate]:
    """Per data set and variant (in the order of the grid), the epochs left and their median seconds."""
    left: dict[tuple[str, str], list[int]] = {}
    stops_early: set[tuple[str, str]] = set()
    for p in planned:
        epochs = left.setdefault((p.spec.dataset, p.spec.variant), [])
        if p.state in TO_TRAIN:
            epochs.append(p.spec.epochs - p.epochs_done)
            if p.spec.stop_at is not None:
                stops_early.add((p.spec.dataset, p.spec.variant))
    estimates = []
    for (dataset, variant), epochs in left.items():
        own, fallback = medians.get((dataset, variant)), medians.get((dataset, None))
        basis = "variant" if own is not None else "data set" if fallback is not None else None
        seconds = own if own is not None else fallback
        if epochs:
            estimates.append(Estimate(dataset, variant, len(epochs), sum(epochs), seconds, basis, (dataset, variant) in stops_early))
    return estimates


def duration(seconds: float) -> str:
    """12 s, 4.5 min, 2.1 h"""
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
