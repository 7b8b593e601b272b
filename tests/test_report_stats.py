"""The report's clocks and statistics: CPU time recorded by a real run, `--clock cpu`, the median
speedup's bootstrap interval and Holm's adjustment against independent computations, the grid
view, the speedup-against-λ plot and the flag of inert feedback.

A study on one data set (usps, target 0.9, 6 seeds, 6 epochs a run), recorded through the real
recording API: a baseline and five TE variants that reach the target at these epochs,

    seed               0  1  2  3  4  5   feedback diagnostics (factor_dev_max per epoch)
    baseline           4  5  4  6  5  4   none (a baseline)
    te-l0.5  λ 0.5     4  5  4  6  5  4   0 in every epoch: inert, flagged
    te-l1    λ 1       3  4  4  5  4  3   not recorded (NULL): unknown
    te-l2    λ 2       2  3  2  3  3  2   0.05 in every epoch
    te-l4    λ 4       5  6  5  6  6  5   0 in 4 epochs of 6, NULL in 2: inert in 24 of 36, flagged
    te-d2    λ 2 dampen 4 4  3  6  5  4   0 in 2, 0.05 in 1, NULL in 3: inert in 12 of 36, not flagged

and mnist (same target): a baseline and one TE variant over 3 seeds, one TE run of which has an
epoch without CPU time, as rows recorded before tecli measured it have. Epochs take 1.0 s of wall
time and 1.8 s of CPU time (baseline) or 1.2 s and 2.0 s (TE).
"""

import itertools
import json
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import bootstrap
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from recorded import record_run
from tecli.cli import app
from tecli.db.schema import Epoch
from tecli.db.store import open_database
from tecli.epoch import EpochResult
from tecli.report.arithmetic import median
from tecli.report.build import build_report
from tecli.report.stats import bootstrap_median, holm, median_interval
from tecli.spec import RunSpec, TEConfig

EPOCHS = 6
REACHED = {
    "baseline": (4, 5, 4, 6, 5, 4),
    "te-l0.5": (4, 5, 4, 6, 5, 4),
    "te-l1": (3, 4, 4, 5, 4, 3),
    "te-l2": (2, 3, 2, 3, 3, 2),
    "te-l4": (5, 6, 5, 6, 6, 5),
    "te-d2": (4, 4, 3, 6, 5, 4),
}
TE = {
    "te-l0.5": TEConfig(lam=0.5),
    "te-l1": TEConfig(lam=1.0),
    "te-l2": TEConfig(lam=2.0),
    "te-l4": TEConfig(lam=4.0),
    "te-d2": TEConfig(lam=2.0, mode="dampen"),
}
DIAGNOSTICS = {  # factor_dev_max of epochs 1..6
    "te-l0.5": (0.0,) * 6,
    "te-l1": (None,) * 6,
    "te-l2": (0.05,) * 6,
    "te-l4": (0.0, 0.0, 0.0, 0.0, None, None),
    "te-d2": (0.0, 0.0, 0.05, None, None, None),
}
VARIANTS = tuple(TE)
MNIST_REACHED = {"baseline": (3, 4, 3), "te": (2, 4, 3)}


def epochs_of(variant: str, reached: int, cpu_missing_at: int | None = None) -> list[EpochResult]:
    te = variant != "baseline"
    diagnostics = DIAGNOSTICS.get(variant, (None,) * EPOCHS)
    return [
        EpochResult(
            epoch, 0.1, 0.9, 0.2, 0.5 if epoch < reached else 0.95, seconds=1.2 if te else 1.0,
            te_seconds=0.1 if te else 0.0, te_mean=0.01 if te else None, te_max=0.1 if te else None,
            cpu_seconds=None if epoch == cpu_missing_at else (2.0 if te else 1.8),
            factor_dev_max=diagnostics[epoch - 1], factor_dev_mean=None if diagnostics[epoch - 1] is None else 0.0,
        )  # fmt: skip
        for epoch in range(1, EPOCHS + 1)
    ]


def fill(url: str) -> dict:
    """The database above; returns run ids by (data set, variant, seed)."""
    engine = open_database(url)
    ids = {}
    for variant, reached in REACHED.items():
        for seed, epoch in enumerate(reached):
            spec = RunSpec(dataset="usps", seed=seed, epochs=EPOCHS, te=TE.get(variant), variant=variant)
            ids["usps", variant, seed] = record_run(engine, spec, epochs_of(variant, epoch))
    for variant, reached in MNIST_REACHED.items():
        for seed, epoch in enumerate(reached):
            spec = RunSpec(dataset="mnist", seed=seed, epochs=EPOCHS, te=TEConfig() if variant == "te" else None)
            ids["mnist", variant, seed] = record_run(engine, spec, epochs_of(variant, epoch, 2 if (variant, seed) == ("te", 1) else None))
    return ids


@pytest.fixture
def study(db_url):
    return db_url, fill(db_url)


def report(url: str, *args: str) -> str:
    """`tecli report` on the database at url, with the study's target unless args give one."""
    target = [] if "--target" in args else ["--target", "0.9"]
    result = CliRunner().invoke(app, ["report", "--db", url, *target, *args])
    assert result.exit_code == 0, result.output
    return result.output


def groups_of(data: dict) -> dict:
    return {(g["dataset"], g["variant"]): g for g in data["groups"]}


def built_groups(url: str, **options) -> dict:
    """The report's groups as computed, before json rounds them to 15 digits."""
    return groups_of({"groups": build_report(open_database(url), target=0.9, **options).groups})


# Independent computations: every resample enumerated, Holm's procedure by its definition.


def enumerated_medians(values) -> Counter:
    """The median of each of the n**n resamples (index tuples) of `values`."""
    return Counter(median([values[i] for i in index]) for index in itertools.product(range(len(values)), repeat=len(values)))


def quantile(medians: Counter, share: float) -> float:
    """The smallest median whose share of resamples at or below it reaches `share`."""
    total, seen = sum(medians.values()), 0
    for value in sorted(medians):
        seen += medians[value]
        if seen >= share * total - 1e-9:
            return value
    raise AssertionError("unreachable")


def holm_by_definition(pvalues: list[float]) -> list[float]:
    """Holm's adjusted p of each hypothesis: the largest (m - #smaller p) * p over the p-values
    at most its own, at most 1; NaN is no test."""
    tested = [p for p in pvalues if not math.isnan(p)]
    m = len(tested)
    return [
        math.nan if math.isnan(p) else min(1.0, max((m - sum(q < r for q in tested)) * r for r in tested if r <= p))
        for p in pvalues
    ]


def ratios(base: tuple, other: tuple) -> list[float]:
    return [b / o for b, o in zip(base, other)]


# CPU time, recorded by a real run.


def test_a_real_run_records_cpu_seconds_and_the_cpu_clock_reports_them(tmp_path):
    db = str(tmp_path / "real.db")
    result = CliRunner().invoke(app, ["run", "--dataset", "digits", "--epochs", "1", "--threads", "1", "--db", db])
    assert result.exit_code == 0, result.output
    with Session(open_database(db)) as session:
        epoch = session.scalars(select(Epoch)).one()
    assert epoch.cpu_seconds > 0 and epoch.seconds > 0
    diagnostics = (epoch.source_fire_rate, epoch.target_fire_rate, epoch.te_positive_share, epoch.factor_dev_mean, epoch.factor_dev_max)
    assert diagnostics == (None,) * 5  # a baseline has no feedback to diagnose
    for clock, seconds in (("wall", epoch.seconds), ("cpu", epoch.cpu_seconds)):
        data = json.loads(report(db, "--target", "0.05", "--clock", clock, "--format", "json"))
        assert data["clock"] == clock and data["unclocked_runs"] == []
        run = data["runs"][0]  # json carries 15 significant digits
        assert run["seconds_to_target"] == pytest.approx(seconds, rel=1e-14) and run["mean_epoch_s"] == pytest.approx(seconds, rel=1e-14)


# --clock


def test_the_cpu_clock_counts_cpu_seconds_and_names_runs_without_them(study):
    url, ids = study
    wall = json.loads(report(url, "--format", "json"))
    cpu = json.loads(report(url, "--format", "json", "--clock", "cpu"))
    wall_runs, cpu_runs = ({r["run_id"]: r for r in data["runs"]} for data in (wall, cpu))
    base = ids["usps", "baseline", 0]  # reached at epoch 4
    assert wall_runs[base]["seconds_to_target"] == pytest.approx(4.0) and cpu_runs[base]["seconds_to_target"] == pytest.approx(7.2)
    assert cpu_runs[base]["mean_epoch_s"] == pytest.approx(1.8)
    assert cpu_runs[base]["te_share"] == wall_runs[base]["te_share"]  # TE seconds are wall time, over wall time
    usps_te = groups_of(cpu)["usps", "te-l2"]
    assert usps_te["seconds_mean"] == pytest.approx(2.0 * 15 / 6) and usps_te["epoch_time_ratio"] == pytest.approx(2.0 / 1.8)
    assert usps_te["speedup_seconds"] == pytest.approx((1.8 * 28) / (2.0 * 15))
    # mnist te seed 1 lacks CPU time in epoch 2: no seconds for it, its group or its comparison; its epochs stand.
    unclocked = ids["mnist", "te", 1]
    assert cpu["unclocked_runs"] == [unclocked] and wall["unclocked_runs"] == []
    assert cpu_runs[unclocked]["seconds_to_target"] is None and cpu_runs[unclocked]["epochs_to_target"] == 4
    mnist_te, mnist_base = groups_of(cpu)["mnist", "te"], groups_of(cpu)["mnist", "baseline"]
    assert mnist_te["seconds_mean"] is None and mnist_te["speedup_seconds"] is None and mnist_te["median_speedup_seconds"] is None
    assert mnist_te["speedup_epochs"] == pytest.approx(10 / 9) and mnist_base["seconds_mean"] == pytest.approx(1.8 * 10 / 3)
    assert groups_of(wall)["mnist", "te"]["speedup_seconds"] == pytest.approx(10 / (9 * 1.2))
    statement = next(s for s in cpu["statements"] if s.startswith("mnist/te vs baseline"))
    assert "in seconds" not in statement and "nan" not in statement
    line = f"CPU time was not recorded for every epoch of runs {unclocked} (recorded before tecli measured it)"
    for fmt in ("markdown", "table", "html"):
        text = report(url, "--format", fmt, "--clock", "cpu")
        assert text.count("CPU time was not recorded") == 1 and line in " ".join(text.split())
        assert "CPU time was not recorded" not in report(url, "--format", fmt)
    assert "seconds are cumulative epoch process CPU time (all threads)" in report(url, "--format", "markdown", "--clock", "cpu")


def test_an_unknown_clock_is_one_line(study):
    result = CliRunner().invoke(app, ["report", "--db", study[0], "--clock", "gpu"])
    assert result.exit_code == 2 and result.output.strip() == "error: --clock must be one of wall, cpu, got 'gpu'"


# The median speedup's bootstrap interval.


@pytest.mark.parametrize(
    "values",
    [[1.0], [2.0, 1.0], [2.0, 1.5, 0.5], [1, 1, 2, 3], [3, 1, 2, 5, 4], [0.5, 1, 1, 2, 2, 2], [1, 1, 1, 1], [1, 2, 2, 2, 2, 3, 7]],
)
def test_bootstrap_distribution_is_every_resample_enumerated(values):
    enumerated = enumerated_medians(values)
    medians, at_most = bootstrap_median(values)
    assert medians == sorted(enumerated)
    assert [at_most(t) for t in medians] == list(itertools.accumulate(enumerated[t] for t in medians))
    assert at_most(min(values) - 0.5) == 0 and at_most(max(values) + 0.5) == len(values) ** len(values)
    between = [(a + b) / 2 for a, b in zip(medians, medians[1:])]  # no resample has these medians
    assert [at_most(t) for t in between] == [at_most(t) for t in medians[:-1]]
    assert median_interval(values) == (quantile(enumerated, 0.025), quantile(enumerated, 0.975))


def scipy_interval(values, n_resamples=100_000) -> tuple[float, float]:
    result = bootstrap(
        (np.asarray(values, dtype=float),), np.median, method="percentile", n_resamples=n_resamples,
        batch=10_000, rng=np.random.default_rng(0),
    )  # fmt: skip
    return result.confidence_interval.low, result.confidence_interval.high


@pytest.mark.parametrize("n", [5, 8, 15, 20, 33])
@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_interval_is_scipys_with_unlimited_resamples(n, ties):
    """SciPy's percentile bootstrap draws 100,000 resamples: its ends lie where the exact bootstrap
    distribution's cumulative share is 0.025 and 0.975, to within its Monte Carlo error (0.0005)."""
    rng = np.random.default_rng(n)
    values = (rng.integers(2, 9, n) / rng.integers(2, 9, n) if ties else rng.lognormal(0, 0.3, n)).tolist()
    _, at_most = bootstrap_median(values)
    total = len(values) ** len(values)

    def share_below(x: float, inclusive: bool) -> float:
        return at_most(x if inclusive else math.nextafter(x, -math.inf)) / total

    low, high = scipy_interval(values)
    ours = median_interval(values)
    for theirs, mine, level in ((low, ours[0], 0.025), (high, ours[1], 0.975)):
        assert share_below(theirs, False) <= level + 0.003 and share_below(theirs, True) >= level - 0.003
        assert share_below(mine, False) < level <= share_below(mine, True)


def test_report_intervals_are_those_of_the_per_seed_speedups(study):
    url, _ = study
    groups = built_groups(url)
    for variant in VARIANTS:
        g = groups["usps", variant]
        speedups = ratios(REACHED["baseline"], REACHED[variant])
        medians = enumerated_medians(speedups)
        assert g["median_speedup_epochs"] == median(speedups)
        assert (g["median_speedup_epochs_low"], g["median_speedup_epochs_high"]) == (quantile(medians, 0.025), quantile(medians, 0.975))
        # seconds to target are reached epochs times 1.0 s (baseline) and 1.2 s (TE)
        assert g["median_speedup_seconds"] == pytest.approx(median(ratios(REACHED["baseline"], [1.2 * e for e in REACHED[variant]])))
    assert (groups["usps", "te-l0.5"]["median_speedup_epochs_low"], groups["usps", "te-l0.5"]["median_speedup_epochs_high"]) == (1.0, 1.0)
    # te-l2: per-seed speedups 2, 5/3, 2, 2, 5/3, 2 (mean speedup 28/15); in seconds each over 1.2
    te_l2 = next(line for line in report(url, "--format", "markdown").splitlines() if line.startswith("| usps | te-l2 |"))
    assert "| 1.87x (p " in te_l2 and "| 2.00x [1.67, 2.00] |" in te_l2 and "| 1.67x [1.39, 1.67] |" in te_l2


# Holm's adjustment.


def test_holm_on_a_hand_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4 0.02, x3 0.03, x2 0.06, x1 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.01, math.nan, 0.04]) == pytest.approx([0.02, math.nan, 0.04], nan_ok=True)  # NaN is no test
    assert holm([0.6, 0.7]) == [1.0, 1.0] and holm([0.2]) == [0.2] and holm([]) == []
    assert holm([0.02, 0.02, 0.5]) == pytest.approx([0.06, 0.06, 0.5])  # ties share the larger factor


def random_pvalues(seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform(0, 0.3, rng.integers(1, 12)), 3).tolist()  # rounded: ties happen


@pytest.mark.parametrize("seed", range(20))
def test_holm_matches_its_definition(seed):
    pvalues = random_pvalues(seed)
    assert holm(pvalues) == pytest.approx(holm_by_definition(pvalues), rel=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_holm_matches_statsmodels(seed):
    multitest = pytest.importorskip("statsmodels.stats.multitest", reason="statsmodels is not installed")
    pvalues = random_pvalues(seed)
    assert holm(pvalues) == pytest.approx(multitest.multipletests(pvalues, method="holm")[1].tolist(), rel=1e-12)


def test_report_adjusts_p_across_the_variants_of_a_data_set(study):
    url, _ = study
    groups = built_groups(url)
    # By hand: te-l2 differs from the baseline by +1 or more on all 6 seeds (exact p = 2/2^6), te-l1 on 5
    # (one tie dropped: 2/2^5), te-l4 by -1 on 5, te-d2 on 2 (2/2^2); te-l0.5 ties on every seed: no test.
    # Holm over the 4 tests: 4 x 1/32, then 3 x 1/16 and 2 x 1/16 (held at 3/16), then 1 x 1/2.
    raw = [groups["usps", v]["p_epochs"] for v in VARIANTS]
    assert raw == pytest.approx([math.nan, 1 / 16, 1 / 32, 1 / 16, 1 / 2], nan_ok=True)
    assert [groups["usps", v]["p_epochs_holm"] for v in VARIANTS] == pytest.approx([math.nan, 3 / 16, 1 / 8, 3 / 16, 1 / 2], nan_ok=True)
    for measure in ("epochs", "seconds"):  # in seconds te-l0.5 differs too (its epochs take 1.2 s): five tests
        raw = [groups["usps", v][f"p_{measure}"] for v in VARIANTS]
        adjusted = [groups["usps", v][f"p_{measure}_holm"] for v in VARIANTS]
        assert adjusted == pytest.approx(holm_by_definition(raw), rel=1e-15, nan_ok=True)
    assert all(groups["usps", v]["holm_variants"] == 5 for v in VARIANTS)
    data = json.loads(report(url, "--format", "json"))
    # One variant on mnist: Holm's p is the p itself, and no statement or cell mentions it.
    mnist = groups["mnist", "te"]
    assert mnist["p_epochs_holm"] == mnist["p_epochs"] and mnist["holm_variants"] == 1
    l2 = next(s for s in data["statements"] if s.startswith("usps/te-l2 vs baseline"))
    assert "(Wilcoxon p = 0.031, Holm-adjusted across the data set's 5 variants 0.125; median per seed 2.00x" in l2
    assert "No significant difference in epochs to the target at 0.05" in l2  # p < 0.05, but not after Holm's adjustment
    assert "Holm" not in next(s for s in data["statements"] if s.startswith("usps/te-l0.5 vs baseline"))  # no test, nothing to adjust
    assert not any("Holm" in s for s in data["statements"] if s.startswith("mnist"))
    markdown = report(url, "--format", "markdown")
    assert f"(p {groups['usps', 'te-l2']['p_epochs']:.3f}, Holm {groups['usps', 'te-l2']['p_epochs_holm']:.3f})" in markdown


# The grid view, the λ plot and inert feedback.


def test_grid_ranks_variants_by_median_speedup_unasked_above_three(study):
    url, ids = study
    data = json.loads(report(url, "--format", "json"))
    medians = {v: median(ratios(REACHED["baseline"], REACHED[v])) for v in VARIANTS}
    assert data["grid"] == {"usps": sorted(VARIANTS, key=lambda v: (-medians[v], v))}  # mnist has one variant
    assert data["grid"]["usps"] == ["te-l2", "te-l1", "te-d2", "te-l0.5", "te-l4"]
    assert json.loads(report(url, "--format", "json", "--grid"))["grid"]["mnist"] == ["te"]
    assert json.loads(report(url, "--format", "json", "--dataset", "usps", "--variant", "te-l2"))["grid"] == {}
    markdown = report(url, "--format", "markdown")
    grid = markdown.split("## Grid: variants by median speedup")[1].split("## What the numbers say")[0]
    rows = [line for line in grid.splitlines() if line.startswith("| te-")]
    assert [row.split(" | ")[0][2:] for row in rows] == data["grid"]["usps"]
    te_l2_runs = " ".join(str(ids["usps", "te-l2", seed]) for seed in range(6))
    g = groups_of(data)["usps", "te-l2"]
    assert rows[0] == (
        f"| te-l2 | 2 | amplify | weights | 6 | 2.00x [1.67, 2.00] | {g['p_epochs_holm']:.3f} | "
        f"1.67x [1.39, 1.67] | {g['p_seconds_holm']:.3f} | 0 of 36 | {te_l2_runs} |"
    )
    cells = {row.split(" | ")[0][2:]: row.split(" | ")[9] for row in rows}
    assert cells == {
        "te-l2": "0 of 36", "te-l1": "unknown", "te-d2": "12 of 18, 18 unknown",
        "te-l0.5": "mostly inert: 36 of 36", "te-l4": "mostly inert: 24 of 24, 12 unknown",
    }  # fmt: skip
    table = report(url, "--grid")
    assert "usps: variants by median speedup in epochs" in table and "mnist: variants by median speedup" in table


def test_inert_feedback_is_flagged_in_most_epochs_only(study):
    url, _ = study
    data = json.loads(report(url, "--format", "json"))
    groups = groups_of(data)
    assert {v: groups["usps", v]["inert"] for v in VARIANTS} == {
        "te-l0.5": True, "te-l1": False, "te-l2": False, "te-l4": True, "te-d2": False,
    }  # fmt: skip
    assert [(groups["usps", v]["epochs_inert"], groups["usps", v]["epochs_diagnosed"]) for v in VARIANTS] == [
        (36, 36), (0, 0), (0, 36), (24, 24), (12, 18),
    ]
    assert groups["usps", "baseline"]["inert"] is False and groups["usps", "baseline"]["epochs_inert"] is None
    flags = [s for s in data["statements"] if "the TE feedback was inert" in s]
    assert flags == [
        "usps/te-l0.5: the TE feedback was inert (no factor moved from 1, factor_dev_max = 0) in 36 of 36 epochs, so these "
        "runs trained as baseline runs do in those epochs; their comparison says little about TE feedback.",
        "usps/te-l4: the TE feedback was inert (no factor moved from 1, factor_dev_max = 0) in 24 of 36 epochs, so these "
        "runs trained as baseline runs do in those epochs; their comparison says little about TE feedback.",
    ]
    position = data["statements"].index(flags[0])
    assert data["statements"][position - 1].startswith("usps/te-l0.5 vs baseline")  # right after its group's statement


def test_markdown_with_plots_adds_speedup_against_lambda(study, tmp_path):
    url, _ = study
    out = tmp_path / "out" / "r.md"
    out.parent.mkdir()
    result = CliRunner().invoke(app, ["report", "--db", url, "--target", "0.9", "--format", "markdown", "--output", str(out)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["r-mnist.png", "r-usps-lambda.png", "r-usps.png", "r.md"]  # the λ plot only for the grid's data set
    assert (out.parent / "r-usps-lambda.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![r-usps-lambda](r-usps-lambda.png)" in out.read_text()
    result = CliRunner().invoke(
        app, ["report", "--db", url, "--target", "0.9", "--format", "html", "--output", str(tmp_path / "out" / "g.html"), "--grid", "--clock", "cpu"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "g-mnist-lambda.png").is_file()  # with --grid every data set with TE variants gets one


def test_epoch_results_carry_diagnostics_to_the_database(db_url):
    engine = open_database(db_url)
    measured = EpochResult(1, 0.5, 0.8, 0.6, 0.7, 1.0, 0.1, 0.02, 0.2)
    measured = replace(measured, cpu_seconds=1.7, source_fire_rate=0.4, target_fire_rate=0.1, te_positive_share=0.6,
                       factor_dev_mean=0.01, factor_dev_max=0.03)  # fmt: skip
    run_id = record_run(engine, RunSpec(dataset="usps", seed=1, epochs=1, te=TEConfig()), [measured])
    with Session(engine) as session:
        epoch = session.scalars(select(Epoch).where(Epoch.run_id == run_id)).one()
        assert (epoch.cpu_seconds, epoch.source_fire_rate, epoch.target_fire_rate, epoch.te_positive_share) == (1.7, 0.4, 0.1, 0.6)
        assert (epoch.factor_dev_mean, epoch.factor_dev_max) == (0.01, 0.03)
