"""Observation rows (`tecli run --observe`, table `observations`) for the reports: loading them,
and the per-variant means per epoch and layer that `tecli report` adds when its runs observed.

Imported only when observation rows exist; plain Python like the rest of the report.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Engine

from tecli.db.schema import Observation
from tecli.report.arithmetic import mean

MEASURES = ("neuron_entropy", "h_t", "i_ty", "te_next", "te_class")
HEADERS = {"neuron_entropy": "neuron entropy", "h_t": "H(T)", "i_ty": "I(T;Y)", "te_next": "TE → next", "te_class": "TE → class"}
DIGITS = {"neuron_entropy": 3, "h_t": 2, "i_ty": 2, "te_next": 3, "te_class": 3}
COLUMNS = ("epoch", "position", "layer", "neurons", *MEASURES)
MEANS_HEADERS = ("data set", "variant", "layer", "runs", *(f"{HEADERS[m]} by epoch" for m in MEASURES))


def load(engine: Engine, run_ids) -> dict[int, list[dict]]:
    """The runs' observation rows as dicts (COLUMNS), by run id, in epoch and layer order; runs
    without rows are absent."""
    query = (
        select(Observation.run_id, *(getattr(Observation, name) for name in COLUMNS))
        .where(Observation.run_id.in_(list(run_ids)))
        .order_by(Observation.run_id, Observation.epoch, Observation.position)
    )
    rows: dict[int, list[dict]] = {}
    with engine.connect() as connection:
        for run_id, *values in connection.execute(query):
            rows.setdefault(run_id, []).append(dict(zip(COLUMNS, values)))
    return rows


def number(value: float | None, measure: str) -> str:
    return "-" if value is None else f"{value:.{DIGITS[measure]}f}"


def variant_means(runs: list[dict], rows: dict[int, list[dict]]) -> list[dict]:
    """Per data set, variant, layer and epoch: the mean of each measure over the variant's runs
    that observed that epoch (`runs`: the report's runs, with run_id, dataset and variant)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        for row in rows.get(run["run_id"], ()):
            key = (run["dataset"], run["variant"], row["position"], row["layer"], row["epoch"])
            groups.setdefault(key, []).append(row)
    means = []
    for (dataset, variant, position, layer, epoch), group in sorted(groups.items()):
        values = {m: [row[m] for row in group if row[m] is not None] for m in MEASURES}
        means.append({
            "dataset": dataset, "variant": variant, "layer": layer, "position": position, "epoch": epoch, "runs": len(group),
            **{m: mean(v) if v else None for m, v in values.items()},
        })  # fmt: skip
    return means


def means_rows(means: list[dict]) -> list[list[str]]:
    """One row per data set, variant and layer; each measure's cell is its means from the first epoch to the last."""
    series: dict[tuple, list[dict]] = {}
    for row in means:  # sorted by data set, variant, position, epoch
        series.setdefault((row["dataset"], row["variant"], row["position"], row["layer"]), []).append(row)
    return [
        [dataset, variant, layer, str(max(row["runs"] for row in rows)), *(_series_text(rows, m) for m in MEASURES)]
        for (dataset, variant, _, layer), rows in series.items()
    ]


def _series_text(rows: list[dict], measure: str) -> str:
    """A measure's values epoch by epoch; "-" for a measure the layer does not have (TE of a conv block)."""
    if all(row[measure] is None for row in rows):
        return "-"
    return " ".join(number(row[measure], measure) for row in rows)


MEANS_INTRO = (
    "Means over each variant's observed runs (tecli run --observe), epoch 1 first: mean neuron entropy of the layer's "
    "on/off states, H(T) (= I(X;T)) and I(T;Y) of its binary patterns on the probe set, and the mean TE from the layer "
    "to the next Linear layer and to the class layer (bits; plug-in estimates, see README). `tecli inspect RUN_ID ...` "
    "plots single runs."
)
