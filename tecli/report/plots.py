"""Plots: learning curves per data set, and speedup against λ for the grid view's data sets.

Learning curves: test accuracy against epoch and against seconds on the report's clock.
One figure per data set, two panels; per variant the mean over seeds with a
+-1 std band, and the target as a dashed line. Runs record accuracy at epoch
ends, at different times; for the seconds panel each run's curve is linearly
interpolated onto a common time grid that ends where the shortest run ends (runs
without the clock are left out of that panel).

Speedup against λ: per data set of the grid view, the median speedup over the baseline
(in epochs, and in seconds where those are compared) of each TE variant against its λ,
with the bootstrap interval as error bars, one series per mode and reach.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tecli.report.build import Report
from tecli.report.grid import grid_rows

GRID_POINTS = 200
LEGEND_INSIDE = 8  # variants a legend inside an axes holds; more go below the panels, in columns
CLOCK_LABELS = {"wall": "wall-clock seconds (cumulative epoch time)", "cpu": "CPU seconds (cumulative epoch CPU time)"}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(ax, x, values, label):
    mean = values.mean(axis=0)
    std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros_like(mean)  # as in the tables
    (line,) = ax.plot(x, mean, label=f"{label} (n={len(values)})")
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)


def plot_curves(report: Report, folder: Path, prefix: str) -> list[Path]:
    """Write `<prefix>-<dataset>.png` files into folder; returns their paths."""
    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset in sorted({c.dataset for c in report.curves}):
        variants = sorted({c.variant for c in report.curves if c.dataset == dataset})
        many = len(variants) > LEGEND_INSIDE
        rows = -(-len(variants) // 2)
        fig, (by_epoch, by_time) = plt.subplots(
            1, 2, figsize=(11, 4 + 0.16 * rows if many else 4), sharey=True, layout="constrained" if many else None
        )
        for variant in variants:
            runs = [c for c in report.curves if c.dataset == dataset and c.variant == variant]
            epochs = min(len(r.test_acc) for r in runs)
            _band(by_epoch, np.arange(1, epochs + 1), np.array([r.test_acc[:epochs] for r in runs]), variant)
            runs = [r for r in runs if r.seconds is not None]
            if not runs:
                continue
            end = min(r.cum_seconds[-1] for r in runs)
            grid = np.linspace(0, end, GRID_POINTS)
            values = np.array([np.interp(grid, [0.0, *r.cum_seconds], [np.nan, *r.test_acc], left=np.nan) for r in runs])
            keep = ~np.isnan(values).any(axis=0)
            _band(by_time, grid[keep], values[:, keep], variant)
        target = report.targets.get(dataset)
        for ax, xlabel in ((by_epoch, "epoch"), (by_time, CLOCK_LABELS[report.clock])):
            if target and target[1] == "test_acc":
                ax.axhline(target[0], color="black", linestyle="--", linewidth=1, label=f"target {target[0]:g}")
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        by_epoch.set_ylabel("test accuracy")
        if many:
            fig.legend(*by_epoch.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize="x-small")
        else:
            by_epoch.legend(loc="lower right")
        fig.suptitle(f"{dataset}: test accuracy, mean +- std over seeds")
        written.append(save(fig, folder / f"{prefix}-{dataset}.png"))
    return written


def save(fig, path):
    """Lay the figure out, write it as PNG to `path` (a file path or a binary file) and close it; returns `path`."""
    plt = pyplot()

    if fig.get_layout_engine() is None:  # (a constrained layout lays itself out)
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lambda(report: Report, folder: Path, prefix: str) -> list[Path]:
    """Write `<prefix>-<dataset>-lambda.png` for each grid data set with TE variants; returns their paths."""
    written = []
    for dataset in report.grid:
        rows = [row for row in grid_rows(report.groups, dataset, report.baseline) if row["lam"] is not None]
        if not rows:
            continue
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, measure in zip(axes, ("epochs", "seconds")):
            for (mode, reach), series in _series(rows).items():
                points = sorted((row["lam"], *(row[f"median_speedup_{measure}{end}"] for end in ("", "_low", "_high")))
                                for row in series if not np.isnan(row[f"median_speedup_{measure}_low"]))  # fmt: skip
                if not points:
                    continue
                lam, middle, low, high = np.array(points).T
                one_per_lam = len(set(lam)) == len(lam)  # a line only where it joins one variant per λ
                ax.errorbar(lam, middle, yerr=[middle - low, high - middle], fmt="o-" if one_per_lam else "o",
                            capsize=3, label=f"{mode}, {reach}")  # fmt: skip
            ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
            lams = [row["lam"] for row in rows]
            if min(lams) > 0 and max(lams) >= 10 * min(lams):
                ax.set_xscale("log")
            ax.set_xlabel("λ (TE feedback strength)")
            ax.set_title(f"in {measure}" if measure == "epochs" else f"in {report.clock} seconds")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(f"median speedup over {report.baseline} (95 % interval)")
        axes[0].legend(title="mode, reach")
        fig.suptitle(f"{dataset}: speedup against λ")
        written.append(save(fig, folder / f"{prefix}-{dataset}-lambda.png"))
    return written


def _series(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """TE variants by (mode, reach), in order."""
    series: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        series.setdefault((row["mode"], row["reach"]), []).append(row)
    return dict(sorted(series.items()))
