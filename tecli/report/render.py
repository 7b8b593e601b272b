"""A Report as terminal tables, markdown, csv, json or one self-contained html file."""

from __future__ import annotations

import base64
import html
import json
import math
from collections import Counter
from pathlib import Path

from tecli.conditions import CONDITION_FIELDS
from tecli.report.build import Report, condition_keys, condition_text
from tecli.report.grid import GRID_AUTO, grid_rows
from tecli.report.records import csv_text, json_records

FORMATS = ("table", "markdown", "csv", "json", "html")

GROUP_HEADERS = (
    "data set", "variant", "n", "reached", "epochs to target", "seconds to target",
    "final test acc", "epoch time vs baseline", "TE share", "speedup epochs (p)", "median speedup epochs [95% CI]",
    "speedup seconds (p)", "median speedup seconds [95% CI]", "runs",
)  # fmt: skip
GRID_HEADERS = (
    "variant", "λ", "mode", "reach", "pairs", "median speedup epochs [95% CI]", "Holm p epochs",
    "median speedup seconds [95% CI]", "Holm p seconds", "inert epochs", "runs",
)  # fmt: skip
# Columns whose values pass to csv and json as they are: a NULL beside integers stays null
# rather than making the others floats.
AS_IS = (*CONDITION_FIELDS, "epochs_inert", "epochs_diagnosed")
CLOCK_TEXT = {"wall": "wall time", "cpu": "process CPU time (all threads)"}
RUN_HEADERS = (
    "run", "data set", "variant", "seed", "epochs", "epochs to target", "seconds to target",
    "final test acc", "best test acc", "mean epoch s", "TE share", "device", "threads", "code",
)  # fmt: skip


def _num(value, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _spread(mean, std, median, digits: int, missing: str = "not reached") -> str:
    if math.isnan(mean):
        return missing
    return f"{_num(mean, digits)} ± {_num(std, digits)} (median {_num(median, digits)})"


def _speedup(g: dict, measure: str) -> str:
    """Mean speedup and its p, with Holm's p beside it where the data set has several variants."""
    speedup, p = g[f"speedup_{measure}"], g[f"p_{measure}"]
    if math.isnan(speedup):
        return "-"
    holm = f", Holm {_num(g[f'p_{measure}_holm'], 3)}" if g["holm_variants"] > 1 and not math.isnan(p) else ""
    return f"{speedup:.2f}x (p {_num(p, 3)}{holm})"


def _median_speedup(g: dict, measure: str) -> str:
    """Median per-seed speedup and its bootstrap interval (none below MIN_PAIRS pairs)."""
    middle, low, high = (g[f"median_speedup_{measure}{end}"] for end in ("", "_low", "_high"))
    if math.isnan(middle):
        return "-"
    return f"{middle:.2f}x" if math.isnan(low) else f"{middle:.2f}x [{low:.2f}, {high:.2f}]"


def _inert(g: dict) -> str:
    """How many epochs of a TE group are known to have had inert feedback, of how many known."""
    if g["epochs_inert"] is None:
        return "-"
    if not g["epochs_diagnosed"]:
        return "unknown"
    unknown = g["epochs_total"] - g["epochs_diagnosed"]
    text = f"{g['epochs_inert']} of {g['epochs_diagnosed']}" + (f", {unknown} unknown" if unknown else "")
    return f"mostly inert: {text}" if g["inert"] else text


def group_rows(report: Report) -> list[list[str]]:
    return [
        [
            g["dataset"], g["variant"], str(g["n"]), str(g["n_reached"]),
            _spread(g["epochs_mean"], g["epochs_std"], g["epochs_median"], 1),
            # Seconds are NaN also where conditions differ (the statement says which): "-" then.
            _spread(g["seconds_mean"], g["seconds_std"], g["seconds_median"], 1, "not reached" if math.isnan(g["epochs_mean"]) else "-"),
            f"{_num(g['final_acc_mean'], 4)} ± {_num(g['final_acc_std'], 4)}",
            _num(g["epoch_time_ratio"], 3), f"{g['te_share']:.1%}",
            _speedup(g, "epochs"), _median_speedup(g, "epochs"), _speedup(g, "seconds"), _median_speedup(g, "seconds"),
            g["run_ids"],
        ]  # fmt: skip
        for g in report.groups
    ]


def grid_table_rows(report: Report, dataset: str) -> list[list[str]]:
    return [
        [
            g["variant"], "-" if g["lam"] is None else f"{g['lam']:g}", g["mode"] or "-", g["reach"] or "-", str(g["pairs"]),
            _median_speedup(g, "epochs"), _num(g["p_epochs_holm"], 3), _median_speedup(g, "seconds"),
            _num(g["p_seconds_holm"], 3), _inert(g), g["run_ids"],
        ]  # fmt: skip
        for g in grid_rows(report.groups, dataset, report.baseline)
    ]


def run_rows(report: Report) -> list[list[str]]:
    return [
        [
            str(r["run_id"]), r["dataset"], r["variant"], str(r["seed"]), f"{r['epochs_done']}/{r['epochs_planned']}",
            "not reached" if r["epochs_to_target"] is None else str(r["epochs_to_target"]),
            _num(r["seconds_to_target"], 1), _num(r["final_acc"], 4), _num(r["best_acc"], 4),
            _num(r["mean_epoch_s"], 2), f"{r['te_share']:.1%}",
            _device_text(r["device"], r["gpu_name"]), condition_text("threads", r["threads"]),
            condition_text("code_version", r["code_version"]),
        ]  # fmt: skip
        for r in report.runs
    ]


def _device_text(device, gpu_name) -> str:
    if gpu_name is None and not str(device).startswith("cuda"):
        return condition_text("device", device)
    return f"{condition_text('device', device)} ({condition_text('gpu_name', gpu_name)})"


def _conditions_line(report: Report) -> str:
    """Each set of conditions the listed runs were measured under, most runs first."""
    sets = Counter(condition_keys(report.runs))
    parts = [f"{_conditions_text(key)} ({n} run{'s' if n != 1 else ''})" for key, n in sets.most_common()]
    return "Conditions of measurement: " + "; ".join(parts) + "."


def _conditions_text(key: tuple) -> str:
    """One set of conditions (a condition_keys tuple) as text, the GPU name beside the device."""
    values = dict(zip(CONDITION_FIELDS, key))
    others = [f"{name} {condition_text(name, v)}" for name, v in values.items() if name not in ("device", "gpu_name")]
    return ", ".join([f"device {_device_text(values['device'], values['gpu_name'])}", *others])


def _seconds_rule(report: Report) -> str:
    if report.mixed_conditions:
        return (
            "Seconds are compared even between runs measured under different conditions (--mixed-conditions); "
            "the statements name the conditions that differ."
        )
    return (
        "Seconds (to target, epoch time, speedup) are compared only between runs measured under the same "
        "conditions (device and GPU, threads, memory format, CPU model, code version); where these differ they show as - "
        "and the statement names the difference."
    )


def _method_line(report: Report) -> str:
    return (
        "Epochs and seconds to target: mean ± std (median) over the runs that reached the target; "
        f"seconds are cumulative epoch {CLOCK_TEXT[report.clock]}, TE work and test evaluation included. "
        "Speedup: baseline / variant over seeds where both reached the target, two-sided Wilcoxon signed-rank p "
        "(with Holm's adjustment across a data set's variants beside it, where it has several). "
        "Median speedup: the median over those seeds of baseline / variant, with its percentile bootstrap 95% interval "
        "over seed pairs. " + _seconds_rule(report)
    )


def _clock_line(report: Report) -> str:
    """Runs without the report's clock: their seconds, and their groups' and comparisons', are left out."""
    if not report.unclocked:
        return ""
    return (
        f"CPU time was not recorded for every epoch of runs {' '.join(map(str, report.unclocked))} (recorded before "
        "tecli measured it): on the CPU clock they, their groups and their comparisons have no seconds."
    )


def _grid_intro(report: Report) -> str:
    return (
        f"Per data set with more than {GRID_AUTO} variants (or every one, with --grid): the variants compared with "
        f"{report.baseline}, best median speedup in epochs first; Holm's p across the data set's variants; inert epochs: "
        "epochs whose feedback moved no factor from 1, of those that recorded it (unknown before diagnostics were recorded)."
    )


def _targets_line(report: Report) -> str:
    parts = [f"{d} {t[0]:g} {t[1]}" if t else f"{d} none" for d, t in report.targets.items()]
    return "Targets: " + "; ".join(parts) + "."


def _excluded_line(report: Report) -> str:
    if not report.excluded:
        return ""
    parts = ", ".join(f"{n} {status}" for status, n in sorted(report.excluded.items()))
    return f"Not counted (not completed, or an older completed run of the same key): {parts}."


def md_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(report: Report, images: list[Path]) -> str:
    parts = [
        "# tecli report",
        "",
        _targets_line(report) + f" Baseline variant: {report.baseline}.",
        _conditions_line(report),
        _method_line(report),
        *([_clock_line(report)] if report.unclocked else []),
        "",
        "## Per data set and variant",
        "",
        md_table(GROUP_HEADERS, group_rows(report)),
        "",
    ]
    if report.grid:
        parts += ["## Grid: variants by median speedup", "", _grid_intro(report), ""]
        for dataset in report.grid:
            parts += [f"### {dataset}", "", md_table(GRID_HEADERS, grid_table_rows(report, dataset)), ""]
    parts += [
        "## What the numbers say",
        "",
        *[f"- {s}" for s in report.statements],
        "",
    ]
    if report.observed:
        from tecli.report.observed import MEANS_HEADERS, MEANS_INTRO, means_rows

        parts += ["## Information flow", "", MEANS_INTRO, "", md_table(MEANS_HEADERS, means_rows(report.observed)), ""]
    parts += [
        "## Runs",
        "",
        md_table(RUN_HEADERS, run_rows(report)),
    ]
    if report.excluded:
        parts += ["", _excluded_line(report)]
    if images:
        parts += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(parts) + "\n"


def to_json(report: Report) -> str:
    return json.dumps(
        {
            "targets": {d: ({"target": t[0], "metric": t[1]} if t else None) for d, t in report.targets.items()},
            "baseline": report.baseline,
            "compare_mixed_conditions": report.mixed_conditions,
            "clock": report.clock,
            "unclocked_runs": report.unclocked,
            "grid": {d: [g["variant"] for g in grid_rows(report.groups, d, report.baseline)] for d in report.grid},
            "groups": json_records(report.groups, AS_IS),
            "runs": json_records(report.runs, AS_IS),
            "statements": report.statements,
            "excluded": report.excluded,
            "observed": report.observed,
        },
        indent=2,
    )


def to_csv(report: Report) -> str:
    return csv_text(report.groups, AS_IS)


def html_head(title: str) -> str:
    """An html page's start, up to its body: the style every tecli page shares."""
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
</style></head><body>"""


def html_table(headers, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(report: Report, images: list[Path]) -> str:
    figures = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"></figure>'
        for p in images
    )
    statements = "".join(f"<li>{html.escape(s)}</li>" for s in report.statements)
    excluded = f"<p>{html.escape(_excluded_line(report))}</p>" if report.excluded else ""
    clock = f"<p>{html.escape(_clock_line(report))}</p>" if report.unclocked else ""
    grid = "".join(
        f"<h3>{html.escape(dataset)}</h3>{html_table(GRID_HEADERS, grid_table_rows(report, dataset))}" for dataset in report.grid
    )
    if grid:
        grid = f"<h2>Grid: variants by median speedup</h2><p>{html.escape(_grid_intro(report))}</p>{grid}"
    observed = ""
    if report.observed:
        from tecli.report.observed import MEANS_HEADERS, MEANS_INTRO, means_rows

        observed = f"<h2>Information flow</h2><p>{html.escape(MEANS_INTRO)}</p>{html_table(MEANS_HEADERS, means_rows(report.observed))}"
    return f"""{html_head("tecli report")}
<h1>tecli report</h1>
<p>{html.escape(_targets_line(report))} Baseline variant: {html.escape(report.baseline)}.</p>
<p>{html.escape(_conditions_line(report))}</p>
<p>{html.escape(_method_line(report))}</p>
{clock}
<h2>Per data set and variant</h2>
{html_table(GROUP_HEADERS, group_rows(report))}
{grid}
<h2>What the numbers say</h2><ul>{statements}</ul>
{observed}
<h2>Plots</h2>{figures}
<h2>Runs</h2>
{html_table(RUN_HEADERS, run_rows(report))}
{excluded}
</body></html>
"""


def print_tables(report: Report) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(_targets_line(report), soft_wrap=True)
    console.print(_conditions_line(report), soft_wrap=True)
    if report.clock != "wall":
        console.print(f"Seconds are {CLOCK_TEXT[report.clock]}.", soft_wrap=True)
    if report.unclocked:
        console.print(_clock_line(report), soft_wrap=True)
    table = Table(title="per data set and variant (markdown/html add medians, TE share and run ids)", box=box.SIMPLE_HEAD)
    headers = ("data set", "variant", "reached", "epochs to target", "seconds to target", "final acc", "epoch time",
               "speedup epochs", "median [95% CI]", "speedup s")  # fmt: skip
    for header in headers:
        table.add_column(header, no_wrap=header in ("data set", "variant"))
    for g in report.groups:
        table.add_row(
            g["dataset"], g["variant"], f"{g['n_reached']}/{g['n']}",
            "-" if math.isnan(g["epochs_mean"]) else f"{g['epochs_mean']:.1f} ± {_num(g['epochs_std'], 1)}",
            "-" if math.isnan(g["seconds_mean"]) else f"{g['seconds_mean']:.1f} ± {_num(g['seconds_std'], 1)}",
            f"{g['final_acc_mean']:.4f}", "-" if math.isnan(g["epoch_time_ratio"]) else f"{g['epoch_time_ratio']:.2f}x",
            _speedup(g, "epochs"), _median_speedup(g, "epochs"), _speedup(g, "seconds"),
        )  # fmt: skip
    console.print(table)
    for dataset in report.grid:
        grid = Table(title=f"{dataset}: variants by median speedup in epochs", box=box.SIMPLE_HEAD)
        for header in GRID_HEADERS:
            grid.add_column(header, no_wrap=header == "variant")
        for row in grid_table_rows(report, dataset):
            grid.add_row(*row)
        console.print(grid)
    for statement in report.statements:
        console.print(f"- {statement}", soft_wrap=True)
    if report.excluded:
        console.print(_excluded_line(report))
