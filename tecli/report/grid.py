"""The grid view: per data set, the variants compared with the baseline as rows sorted by
their median speedup in epochs (best first, variants without one last), each with its
bootstrap interval, Holm-adjusted p and how often its feedback was inert, beside its TE
parameters λ, mode and reach.

Shown for every data set with `tecli report --grid`, and unasked for a data set with more
than GRID_AUTO variants compared with its baseline: a study's grid, which the per-group
table (sorted by name) does not rank.
"""

from __future__ import annotations

import math
from collections import Counter

GRID_AUTO = 3


def grid_datasets(groups: list[dict], baseline: str, force: bool) -> list[str]:
    """The data sets with a baseline that get the grid view, in order."""
    variants = Counter(g["dataset"] for g in groups if g["variant"] != baseline)
    with_baseline = {g["dataset"] for g in groups if g["variant"] == baseline}
    return sorted(dataset for dataset, n in variants.items() if dataset in with_baseline and (force or n > GRID_AUTO))


def grid_rows(groups: list[dict], dataset: str, baseline: str) -> list[dict]:
    """The data set's variants other than the baseline, best median speedup in epochs first."""
    rows = [g for g in groups if g["dataset"] == dataset and g["variant"] != baseline]
    return sorted(rows, key=_rank)


def _rank(row: dict) -> tuple:
    speedup = row["median_speedup_epochs"]
    return (True, 0.0, row["variant"]) if math.isnan(speedup) else (False, -speedup, row["variant"])
