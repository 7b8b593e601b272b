"""`tecli inspect RUN_ID ...`: how information flowed through the layers of observed runs, side by side.

For each run (typically a baseline and its TE run with the same seed), from its
observation rows (`tecli run --observe`):

- the information plane: H(T) (= I(X;T) for a deterministic net under this binning)
  against I(T;Y), one curve per layer, its points coloured by epoch;
- the TE between layers over epochs: from each hidden Linear layer to the next one and
  to the class layer;
- the layer-entropy ranking per epoch: the hidden layers (conv blocks and hidden Linear
  layers) by mean neuron entropy, lowest first; the first is the layer the entropy
  metric (Quétu et al., arXiv 2404.18949) would remove first.

The output's extension picks the form: .md (tables), .png (one figure: a column per
run) or .html (the figure embedded, then the tables), a single file. Every mistake is a
UserError before anything is written.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine

from tecli.db.schema import Run
from tecli.errors import UserError, shown
from tecli.report import observed
from tecli.report.render import html_head, html_table, md_table

OUTPUTS = (".md", ".png", ".html")
CLASS_LAYER = "class"
LAYER_HEADERS = ("epoch", "layer", "neurons", *(observed.HEADERS[m] for m in observed.MEASURES))
INTRO = (
    "Measured after every epoch on a fixed probe of training samples (bits; plug-in estimates over the probe: H(T) is "
    "at most log2 of the probe size, see README, Observing information flow). Hidden units fire when > 0 after ReLU; "
    "the class layer is its argmax (one-hot), so its T is the prediction. H(T) = I(X;T) for a deterministic net. "
    "TE: mean over a fixed sample of neuron pairs, delay 0. Removed first: the hidden layer with the lowest mean "
    "neuron entropy (Quétu et al. 2024)."
)


@dataclass
class InspectedRun:
    run_id: int
    dataset: str
    variant: str
    seed: int
    probe: int | None  # the probe size it started with
    rows: list[dict]  # its observation rows (tecli.report.observed.COLUMNS), by epoch and layer

    @property
    def title(self) -> str:
        return f"run {self.run_id}: {self.dataset}/{self.variant}, seed {self.seed}"

    @property
    def epochs(self) -> list[int]:
        return sorted({row["epoch"] for row in self.rows})

    def layer_series(self) -> dict[str, list[dict]]:
        """Each layer's rows in epoch order, layers from input to output."""
        series: dict[str, list[dict]] = {}
        for row in sorted(self.rows, key=lambda r: (r["position"], r["epoch"])):
            series.setdefault(row["layer"], []).append(row)
        return series

    def connections(self) -> dict[str, list[tuple[int, float]]]:
        """TE between layers: "fc1 → fc2" -> [(epoch, TE), ...], each connection once."""
        names = {row["position"]: row["layer"] for row in self.rows}
        found: dict[str, list[tuple[int, float]]] = {}
        for row in self.rows:
            if row["te_next"] is None:
                continue
            following = names[row["position"] + 1]
            found.setdefault(f"{row['layer']} → {following}", []).append((row["epoch"], row["te_next"]))
            if following != CLASS_LAYER:
                found.setdefault(f"{row['layer']} → {CLASS_LAYER}", []).append((row["epoch"], row["te_class"]))
        return found

    def ranking(self) -> dict[int, list[tuple[str, float]]]:
        """Per epoch, the hidden layers by mean neuron entropy, lowest (removed first) first."""
        ranked: dict[int, list[tuple[str, float]]] = {}
        for row in self.rows:
            if row["layer"] != CLASS_LAYER:
                ranked.setdefault(row["epoch"], []).append((row["layer"], row["neuron_entropy"]))
        return {epoch: sorted(layers, key=lambda layer: layer[1]) for epoch, layers in sorted(ranked.items())}


def check_output(output: Path) -> None:
    """UserError unless `output` is a new or existing .md, .png or .html file in a folder that exists."""
    if output.suffix.lower() not in OUTPUTS:
        raise UserError(f"--output must end in {', '.join(OUTPUTS)}, got {shown(output.name)!r}")
    if output.is_dir():
        raise UserError(f"--output {shown(output)} is a folder; pass a file path such as {shown(output / 'inspect.html')}")
    if not output.parent.is_dir():
        raise UserError(f"--output folder {shown(output.parent)} does not exist; create it or pass another path")


def inspect_runs(engine: Engine, run_ids: list[int]) -> list[InspectedRun]:
    """The runs, in the order given (each once), with their observations; UserError for a run
    that does not exist or did not observe."""
    run_ids = list(dict.fromkeys(run_ids))
    with engine.connect() as connection:
        found = {
            row.id: row
            for row in connection.execute(
                select(Run.id, Run.dataset, Run.variant, Run.seed, Run.observe).where(Run.id.in_([i for i in run_ids if 0 < i < 2**31]))
            )
        }
    missing = [run_id for run_id in run_ids if run_id not in found]
    if missing:
        raise UserError(f"no run with id {shown(missing[0])}; `tecli runs` lists the recorded runs")
    rows = observed.load(engine, run_ids)
    unobserved = [run_id for run_id in run_ids if run_id not in rows]
    if unobserved:
        raise UserError(
            f"run {unobserved[0]} has no observations (it trained without --observe, or before its first epoch "
            "ended); train it again with `tecli run ... --observe`"
        )
    return [InspectedRun(*found[run_id], rows[run_id]) for run_id in run_ids]


def write_inspection(runs: list[InspectedRun], output: Path) -> None:
    """Write the inspection of `runs` as output's extension says (check_output first)."""
    form = output.suffix.lower()
    if form == ".md":
        output.write_text(markdown(runs))
    elif form == ".png":
        output.write_bytes(figure_png(runs))
    else:
        output.write_text(to_html(runs, figure_png(runs)))


# ---------------------------------------------------------------- tables


def _ranking_text(layers: list[tuple[str, float]]) -> str:
    return " < ".join(f"{name} {value:.3f}" for name, value in layers)


def side_by_side_rows(runs: list[InspectedRun]) -> tuple[list[str], list[list[str]]]:
    """Per epoch, the layer each run would remove first (lowest mean neuron entropy) and its class layer's I(T;Y)."""
    headers = ["epoch"]
    for run in runs:
        headers += [f"run {run.run_id} removes first", f"run {run.run_id} class I(T;Y)"]
    each = [(run.ranking(), {r["epoch"]: r["i_ty"] for r in run.rows if r["layer"] == CLASS_LAYER}) for run in runs]
    rows = []
    for epoch in sorted({epoch for run in runs for epoch in run.epochs}):
        row = [str(epoch)]
        for ranking, class_i_ty in each:
            row += [ranking[epoch][0][0] if epoch in ranking else "-", observed.number(class_i_ty.get(epoch), "i_ty")]
        rows.append(row)
    return headers, rows


def layer_rows(run: InspectedRun) -> list[list[str]]:
    return [
        [str(row["epoch"]), row["layer"], str(row["neurons"]), *(observed.number(row[m], m) for m in observed.MEASURES)]
        for row in run.rows
    ]


def ranking_rows(run: InspectedRun) -> list[list[str]]:
    return [[str(epoch), layers[0][0], _ranking_text(layers)] for epoch, layers in run.ranking().items()]


RANKING_HEADERS = ("epoch", "removed first", "hidden layers by mean neuron entropy (lowest first)")


def _run_heading(run: InspectedRun) -> str:
    probe = f", probe of {run.probe} training samples" if run.probe else ""
    return f"{run.title}{probe}"


def markdown(runs: list[InspectedRun]) -> str:
    headers, rows = side_by_side_rows(runs)
    parts = [
        f"# tecli inspect: runs {', '.join(str(run.run_id) for run in runs)}", "", INTRO, "",
        "## Side by side", "", md_table(headers, rows), "",
    ]  # fmt: skip
    for run in runs:
        parts += [
            f"## {_run_heading(run)}", "",
            "### Layers by epoch", "", md_table(LAYER_HEADERS, layer_rows(run)), "",
            "### Layer-entropy ranking", "", md_table(RANKING_HEADERS, ranking_rows(run)), "",
        ]  # fmt: skip
    return "\n".join(parts)


def to_html(runs: list[InspectedRun], png: bytes) -> str:
    headers, rows = side_by_side_rows(runs)
    sections = "".join(
        f"<h2>{html.escape(_run_heading(run))}</h2><h3>Layers by epoch</h3>{html_table(LAYER_HEADERS, layer_rows(run))}"
        f"<h3>Layer-entropy ranking</h3>{html_table(RANKING_HEADERS, ranking_rows(run))}"
        for run in runs
    )
    title = f"tecli inspect: runs {', '.join(str(run.run_id) for run in runs)}"
    return f"""{html_head(title)}
<h1>{html.escape(title)}</h1>
<p>{html.escape(INTRO)}</p>
<figure><img alt="information flow" src="data:image/png;base64,{base64.b64encode(png).decode()}"></figure>
<h2>Side by side</h2>
{html_table(headers, rows)}
{sections}
</body></html>
"""


# ---------------------------------------------------------------- the figure

MARKERS = "osD^v<>ph*"


def figure_png(runs: list[InspectedRun]) -> bytes:
    """One figure, a column per run: information plane, TE between layers, neuron entropy per layer."""
    from matplotlib.ticker import MaxNLocator

    from tecli.report.plots import pyplot, save

    plt = pyplot()
    last_epoch = max(max(run.epochs) for run in runs)
    fig, axes = plt.subplots(3, len(runs), figsize=(5.5 * len(runs), 12), sharex="row", sharey="row", squeeze=False)
    for column, run in enumerate(runs):
        plane, te, ranking = axes[:, column]
        series = run.layer_series()
        for marker, (layer, rows) in zip(MARKERS * len(series), series.items()):
            h_t, i_ty, epochs = ([row[name] for row in rows] for name in ("h_t", "i_ty", "epoch"))
            plane.plot(h_t, i_ty, color="0.6", linewidth=1, marker=marker, markerfacecolor="none", zorder=1, label=layer)
            points = plane.scatter(h_t, i_ty, c=epochs, cmap="viridis", vmin=1, vmax=last_epoch, marker=marker,
                                   edgecolors="black", linewidths=0.4, zorder=2)  # fmt: skip
            ranking.plot(epochs, [row["neuron_entropy"] for row in rows], marker=marker, label=layer)
        for connection, values in run.connections().items():
            te.plot(*zip(*values), marker="o", label=connection)
        removed = [(epoch, layers[0][1]) for epoch, layers in run.ranking().items()]
        ranking.scatter(*zip(*removed), s=160, facecolors="none", edgecolors="red", zorder=3, label="removed first")
        plane.set(title=run.title, xlabel="H(T) = I(X;T) (bits)", ylabel="I(T;Y) (bits)")
        te.set(title="TE between layers", xlabel="epoch", ylabel="mean TE (bits)")
        ranking.set(title="mean neuron entropy (lowest hidden: removed first)", xlabel="epoch", ylabel="bits")
        for ax in (plane, te, ranking):
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        for ax in (te, ranking):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(points, ax=plane, label="epoch", ticks=MaxNLocator(integer=True))
    buffer = io.BytesIO()
    save(fig, buffer)
    return buffer.getvalue()
