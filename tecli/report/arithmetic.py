"""Sums, means and standard deviations for the report, in plain Python.

Reports used to compute these with pandas, which sums in NumPy's pairwise order (and
in Kahan's compensated order for cumulative sums). Floating-point addition depends on
the order, so these functions add in those same orders: every number, to the last bit
shown in csv and json, stays what it was, without importing pandas and NumPy (about 0.3 s
of `tecli report`). tests/test_report.py checks them against NumPy and pandas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

BLOCK = 128  # NumPy sums up to this many values in 8 interleaved partial sums, longer runs by halves


def pairwise_sum(values: Sequence[float]) -> float:
    """The sum as NumPy's np.add.reduce computes it (its pairwise summation)."""
    n = len(values)
    if n < 8:
        total = 0.0
        for value in values:
            total += value
        return total
    if n > BLOCK:
        half = n // 2 - n // 2 % 8
        return pairwise_sum(values[:half]) + pairwise_sum(values[half:])
    whole = n - n % 8
    lanes = list(values[:8])
    for start in range(8, whole, 8):
        lanes = [lane + value for lane, value in zip(lanes, values[start : start + 8])]
    total = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
    for value in values[whole:]:
        total += value
    return total


def group_sum(values: Sequence[float]) -> float:
    """A group's sum as pandas' groupby sum computed it for earlier reports (pandas 3.1 uses
    NumPy's np.add.reduceat on sorted groups: the first value plus the pairwise sum of the rest)."""
    return values[0] + pairwise_sum(values[1:])


def running_sums(values: Sequence[float]) -> list[float]:
    """Cumulative sums as pandas' groupby cumsum computed them (Kahan's compensated summation)."""
    total = compensation = 0.0
    sums = []
    for value in values:
        y = value - compensation
        t = total + y
        compensation = (t - total) - y
        total = t
        sums.append(total)
    return sums


def mean(values: Sequence[float]) -> float:
    """The mean as pandas' Series.mean computed it."""
    return pairwise_sum(values) / len(values)


def std(values: Sequence[float]) -> float:
    """The sample standard deviation (ddof 1) as pandas' Series.std computed it; NaN below two values."""
    if len(values) < 2:
        return math.nan
    average = mean(values)
    return math.sqrt(pairwise_sum([(v - average) * (v - average) for v in values]) / (len(values) - 1))


def median(values: Sequence[float]) -> float:
    ordered, middle = sorted(values), len(values) // 2
    return float(ordered[middle]) if len(values) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
