"""Learning curves per data set: test accuracy against epoch and against wall-clock seconds.

One figure per data set, two panels; per variant the mean over seeds with a
+-1 std band, and the target as a dashed line. Runs record accuracy at epoch
ends, at different times; for the seconds panel each run's curve is linearly
interpolated onto a common time grid that ends where the shortest run ends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tecli.report.build import Report

GRID_POINTS = 200


def _band(ax, x, values, label):
    mean = values.mean(axis=0)
    std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros_like(mean)  # as in the tables
    (line,) = ax.plot(x, mean, label=f"{label} (n={len(values)})")
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)


def plot_curves(report: Report, folder: Path, prefix: str) -> list[Path]:
    """Write `<prefix>-<dataset>.png` files into folder; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset in sorted({c.dataset for c in report.curves}):
        fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for variant in sorted({c.variant for c in report.curves if c.dataset == dataset}):
            runs = [c for c in report.curves if c.dataset == dataset and c.variant == variant]
            epochs = min(len(r.test_acc) for r in runs)
            _band(by_epoch, np.arange(1, epochs + 1), np.array([r.test_acc[:epochs] for r in runs]), variant)
            end = min(r.cum_seconds[-1] for r in runs)
            grid = np.linspace(0, end, GRID_POINTS)
            values = np.array([np.interp(grid, [0.0, *r.cum_seconds], [np.nan, *r.test_acc], left=np.nan) for r in runs])
            keep = ~np.isnan(values).any(axis=0)
            _band(by_time, grid[keep], values[:, keep], variant)
        target = report.targets.get(dataset)
        for ax, xlabel in ((by_epoch, "epoch"), (by_time, "wall-clock seconds (cumulative epoch time)")):
            if target and target[1] == "test_acc":
                ax.axhline(target[0], color="black", linestyle="--", linewidth=1, label=f"target {target[0]:g}")
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        by_epoch.set_ylabel("test accuracy")
        by_epoch.legend(loc="lower right")
        fig.suptitle(f"{dataset}: test accuracy, mean +- std over seeds")
        fig.tight_layout()
        path = folder / f"{prefix}-{dataset}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
