"""The two-sided Wilcoxon signed-rank test on paired values, as `scipy.stats.wilcoxon(x, y)`
computes it with its defaults (SciPy 1.15 and later), in plain Python.

Why not SciPy itself: importing scipy.stats takes about 0.6 s, a third of `tecli report`
on 1,000 runs, and no narrower import exists (any scipy.stats submodule runs the package's
__init__, which imports everything). tests/test_report.py checks these p-values against
SciPy's on many inputs, ties and zeros included.

Zero differences are dropped; tied absolute differences share their average rank. The
p-value is exact, from the distribution of the rank sum over all 2^n assignments of
signs, for at most 50 pairs without ties or zeros and for at most 13 pairs with them
(where SciPy runs a permutation test that enumerates the same assignments); otherwise it
is the normal approximation with the tie correction and no continuity correction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import groupby

MAX_EXACT = 50  # pairs, without ties or zeros
MAX_EXACT_TIED = 13  # pairs, with ties or zeros
SQRT1_2 = math.sqrt(0.5)
MAXLOG = 7.09782712893383996843e2  # log of the largest double


def wilcoxon_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided p-value of the signed-rank test that x - y is symmetric about zero."""
    differences = [a - b for a, b in zip(x, y)]
    nonzero = [d for d in differences if d != 0]
    ranks, tie_sizes = _average_ranks([abs(d) for d in nonzero])
    r_plus = sum(r for r, d in zip(ranks, nonzero) if d > 0)
    tied = len(nonzero) < len(differences) or len(tie_sizes) < len(nonzero)
    if len(differences) <= (MAX_EXACT_TIED if tied else MAX_EXACT):
        return _exact_p(ranks, r_plus)
    return _normal_p(r_plus, len(nonzero), tie_sizes)


def _average_ranks(values: list[float]) -> tuple[list[float], list[int]]:
    """Each value's rank (1-based, ties get their average rank) and the size of each group of equal values."""
    rank_of, sizes, below = {}, [], 0
    for value, equal in groupby(sorted(values)):
        size = len(list(equal))
        rank_of[value] = below + (size + 1) / 2
        sizes.append(size)
        below += size
    return [rank_of[v] for v in values], sizes


def _exact_p(ranks: list[float], r_plus: float) -> float:
    """Two-sided p from the number of sign assignments whose sum of positive ranks is at most
    (at least) the observed one. Ranks are whole or half numbers: counted in halves."""
    counts = [1]  # counts[s]: assignments whose positive ranks sum to s halves
    for rank in ranks:
        step = round(2 * rank)
        shifted = [0] * step + counts
        counts = [a + b for a, b in zip(counts + [0] * step, shifted)]
    observed = round(2 * r_plus)
    at_most, at_least = sum(counts[: observed + 1]), sum(counts[observed:])
    return min(1.0, 2 * min(at_most, at_least) / 2 ** len(ranks))


def _normal_p(r_plus: float, n: int, tie_sizes: list[int]) -> float:
    """Two-sided p of the normal approximation, in SciPy's order of operations."""
    mean = n * (n + 1.0) * 0.25
    tie_correction = sum(t**3 - t for t in tie_sizes)
    se = math.sqrt((n * (n + 1.0) * (2.0 * n + 1.0) - tie_correction / 2) / 24)
    return 2 * _normal_sf(abs((r_plus - mean) / se))


def _normal_sf(z: float) -> float:
    """P(Z >= z) for z >= 0 as SciPy's ndtr(-z) computes it, with Cephes' erf and erfc: Python's
    math.erf and math.erfc (the C library's) differ from those in the last bits, which csv shows."""
    t = z * SQRT1_2
    return 0.5 - 0.5 * _erf(t) if t < SQRT1_2 else 0.5 * _erfc(t)


def _erf(t: float) -> float:  # 0 <= t <= 1
    return t * _horner(t * t, ERF_T) / _horner(t * t, ERF_U, monic=True)


def _erfc(t: float) -> float:  # t >= 0.5 ** 0.5
    if t < 1.0:
        return 1.0 - _erf(t)
    if t * t > MAXLOG:  # exp(-t * t) would be subnormal or 0: Cephes returns 0
        return 0.0
    p, q = (ERFC_P, ERFC_Q) if t < 8.0 else (ERFC_R, ERFC_S)
    return math.exp(-t * t) * _horner(t, p) / _horner(t, q, monic=True)


def _horner(x: float, coefficients: tuple[float, ...], monic: bool = False) -> float:
    """The polynomial with these coefficients (highest power first, after a leading 1 when `monic`) at x."""
    total = x + coefficients[0] if monic else coefficients[0]
    for c in coefficients[1:]:
        total = total * x + c
    return total


# Cephes' coefficients (scipy/special/cephes/ndtr.c).
ERF_T = (9.60497373987051638749e0, 9.00260197203842689217e1, 2.23200534594684319226e3, 7.00332514112805075473e3, 5.55923013010394962768e4)
ERF_U = (3.35617141647503099647e1, 5.21357949780152679795e2, 4.59432382970980127987e3, 2.26290000613890934246e4, 4.92673942608635921086e4)
ERFC_P = (
    2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0, 4.86371970985681366614e1,
    1.96520832956077098242e2, 5.26445194995477358631e2, 9.34528527171957607540e2, 1.02755188689515710272e3,
    5.57535335369399327526e2,
)  # fmt: skip
ERFC_Q = (
    1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2, 9.75708501743205489753e2,
    1.82390916687909736289e3, 2.24633760818710981792e3, 1.65666309194161350182e3, 5.57535340817727675546e2,
)  # fmt: skip
ERFC_R = (5.64189583547755073984e-1, 1.27536670759978104416e0, 5.01905042251180477414e0, 6.16021097993053585195e0, 7.40974269950448939160e0, 2.97886665372100240670e0)
ERFC_S = (2.26052863220117276590e0, 9.39603524938001434673e0, 1.20489539808096656605e1, 1.70814450747565897222e1, 9.60896809063285878198e0, 3.36907645100081516050e0)
