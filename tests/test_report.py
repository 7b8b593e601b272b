"""`tecli report` on a small database built through the real recording API, against hand-computed numbers.

usps, target 0.9 test_acc, 3 epochs per run:
  baseline (1.0 s/epoch)                    te (1.5 s/epoch, 0.3 s of it TE work)
  seed 0: .80 .91 .95 -> 2 epochs, 2.0 s    seed 0: .92 .93 .95 -> 1 epoch, 1.5 s
  seed 1: .85 .88 .92 -> 3 epochs, 3.0 s    seed 1: .85 .91 .93 -> 2 epochs, 3.0 s
  seed 2: .70 .80 .85 -> never              seed 2: .88 .90 .91 -> 2 epochs, 3.0 s
  seed 3: .90 .93 .94 -> 1 epoch,  1.0 s    seed 3: .89 .95 .96 -> 2 epochs, 3.0 s
baseline: reached 3/4, epochs 2, 3, 1 -> mean 2, std 1, median 2; final acc mean 0.915
te:       reached 4/4, epochs 1, 2, 2, 2 -> mean 1.75, std 0.5, median 2; seconds mean 2.625, std 0.75
paired seeds 0, 1, 3: epochs 2, 3, 1 vs 1, 2, 2 -> speedup 2 / (5/3) = 1.2;
                      seconds 2, 3, 1 vs 1.5, 3, 3 -> speedup 2 / 2.5 = 0.8
epoch time ratio 1.5; TE share 0.2.
mnist: three te runs (one recorded by `tecli run`, outside the sweep) and no baseline.
One failed and one interrupted usps run (seeds outside the sweep's grid) are not counted.
Every run is measured under TEST_CONDITIONS (cpu, 1 thread, "test cpu", "src:test") unless a test says otherwise.
"""

import base64
import csv
import dataclasses
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy
from scipy.special import ndtr
from scipy.stats import wilcoxon
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from recorded import TEST_CONDITIONS, record_run
from tecli.cli import app
from tecli.db.schema import Run, RunAttempt, RunStatus
from tecli.db.store import open_database
from tecli.epoch import EpochResult
from tecli.report.arithmetic import group_sum, mean, median, pairwise_sum, running_sums, std
from tecli.report.build import build_report
from tecli.report.render import AS_IS
from tecli.report.wilcoxon import _normal_sf, wilcoxon_p
from tecli.spec import RunSpec, TEConfig
from tecli.sweep.file import parse_sweep
from tecli.sweep.plan import register

BASE = {0: (0.80, 0.91, 0.95), 1: (0.85, 0.88, 0.92), 2: (0.70, 0.80, 0.85), 3: (0.90, 0.93, 0.94)}
TE = {0: (0.92, 0.93, 0.95), 1: (0.85, 0.91, 0.93), 2: (0.88, 0.90, 0.91), 3: (0.89, 0.95, 0.96)}


def epoch_result(epoch: int, test_acc: float, seconds: float, te_seconds: float) -> EpochResult:
    return EpochResult(epoch, 0.1, 0.99, 0.2, test_acc, seconds, te_seconds, te_mean=None, te_max=None)


SWEEP = """
name = "s"
seeds = [0, 1, 2, 3]
[defaults]
epochs = 3
[datasets.usps]
target = 0.9
[datasets.mnist]
target = 0.99
[variants.baseline]
te = false
[variants.te]
te = true
"""


def fill(tmp_path, conditions=lambda te, seed: TEST_CONDITIONS, path=None):
    """The database described above (at `path`, else a new SQLite file); `conditions(te, seed)`
    gives each usps run's conditions."""
    path = path or str(tmp_path / "report.db")
    engine = open_database(path)
    sweep_id = register(engine, parse_sweep(SWEEP, tmp_path / "s.toml"))

    def add(dataset, seed, te, accs, seconds, te_seconds, status="completed", in_sweep=True, lr=0.01, cond=TEST_CONDITIONS):
        spec = RunSpec(dataset=dataset, seed=seed, epochs=3, lr=lr, te=TEConfig() if te else None)
        epochs = [epoch_result(epoch, acc, seconds, te_seconds) for epoch, acc in enumerate(accs, 1)]
        record_run(engine, spec, epochs, RunStatus(status), cond, sweep_id if in_sweep else None)
        engine.dispose()  # no connection left open to a server between calls (the engine reconnects when used)

    for seed in range(4):
        add("usps", seed, False, BASE[seed], 1.0, 0.0, cond=conditions(False, seed))
        add("usps", seed, True, TE[seed], 1.5, 0.3, cond=conditions(True, seed))
    add("mnist", 0, True, (0.98, 0.99, 0.992), 2.0, 0.1)
    add("mnist", 1, True, (0.97, 0.985, 0.989), 2.0, 0.1)
    add("usps", 9, False, (0.5,), 1.0, 0.0, status="failed")
    add("usps", 8, True, (0.5,), 1.0, 0.0, status="interrupted")
    add("mnist", 2, True, (0.99, 0.995, 0.995), 2.0, 0.1, in_sweep=False)  # in the grid, run by `tecli run`
    return path, add


@pytest.fixture
def db(tmp_path, db_url):
    """The database above, on SQLite and on the PostgreSQL server: every test using it runs on both."""
    return fill(tmp_path, path=db_url)


def report(db, *args):
    result = CliRunner().invoke(app, ["report", "--db", db[0], *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_json_numbers_equal_hand_computed_values(db):
    data = json.loads(report(db, "--format", "json"))
    groups = {(g["dataset"], g["variant"]): g for g in data["groups"]}
    base, te = groups["usps", "baseline"], groups["usps", "te"]
    assert (base["n"], base["n_reached"], te["n"], te["n_reached"]) == (4, 3, 4, 4)
    assert (base["epochs_mean"], base["epochs_std"], base["epochs_median"]) == (2.0, 1.0, 2.0)
    assert (te["epochs_mean"], te["epochs_std"], te["epochs_median"]) == (1.75, 0.5, 2.0)
    assert (te["seconds_mean"], te["seconds_std"], te["seconds_median"]) == (2.625, 0.75, 3.0)
    assert base["final_acc_mean"] == pytest.approx(0.915)
    assert base["final_acc_std"] == pytest.approx(math.sqrt(0.0061 / 3))
    assert te["epoch_time_ratio"] == pytest.approx(1.5) and te["te_share"] == pytest.approx(0.2)
    assert te["pairs"] == 3
    assert te["speedup_epochs"] == pytest.approx(1.2) and te["speedup_seconds"] == pytest.approx(0.8)
    assert te["p_epochs"] == pytest.approx(wilcoxon([2, 3, 1], [1, 2, 2]).pvalue)
    assert te["p_seconds"] == pytest.approx(wilcoxon([2.0, 3.0, 1.0], [1.5, 3.0, 3.0]).pvalue)
    assert base["run_ids"] == "1 3 5 7" and te["run_ids"] == "2 4 6 8"
    assert math.isnan(groups["mnist", "te"]["epoch_time_ratio"] or math.nan)
    runs = {r["run_id"]: r for r in data["runs"]}
    assert runs[5]["epochs_to_target"] is None and runs[1]["seconds_to_target"] == 2.0
    assert runs[9]["epochs_to_target"] == 2 and runs[10]["epochs_to_target"] is None
    assert data["excluded"] == {"failed": 1, "interrupted": 1}
    assert data["targets"]["usps"] == {"target": 0.9, "metric": "test_acc"}
    assert groups["mnist", "te"]["run_ids"] == "9 10 13" and groups["mnist", "te"]["n_reached"] == 2
    # One set of conditions everywhere: nothing differs, every run carries its conditions.
    assert all(g["mixed_conditions"] == "" for g in data["groups"]) and data["compare_mixed_conditions"] is False
    assert (te["device"], te["gpu_name"], te["threads"], te["cpu_model"], te["code_version"]) == (
        "cpu", "none", "1", "test cpu", "src:test"
    )
    assert all(
        (r["device"], r["gpu_name"], r["threads"], r["cpu_model"], r["code_version"]) == ("cpu", None, 1, "test cpu", "src:test")
        for r in data["runs"]
    )


def test_mixed_conditions_flag_changes_nothing_when_conditions_agree(db):
    plain = json.loads(report(db, "--format", "json"))
    mixed = json.loads(report(db, "--format", "json", "--mixed-conditions"))
    assert mixed["groups"] == plain["groups"] and mixed["statements"] == plain["statements"]
    assert mixed["compare_mixed_conditions"] is True


def test_sweep_scope_is_the_grid_of_the_sweep_file(db):
    db[1]("usps", 0, False, (0.99, 0.99, 0.99), 1.0, 0.0, in_sweep=False, lr=0.05)  # another experiment
    result = CliRunner().invoke(app, ["report", "--db", db[0]])
    assert result.exit_code == 2
    assert "usps/baseline runs have 2 different configurations (e.g. runs 1 and 14); pass --sweep" in result.output
    data = json.loads(report(db, "--format", "json", "--sweep", "s"))
    groups = {(g["dataset"], g["variant"]): g for g in data["groups"]}
    assert groups["usps", "baseline"]["run_ids"] == "1 3 5 7"  # run 14 is not in the grid
    assert groups["mnist", "te"]["run_ids"] == "9 10 13"  # run 13 is, though recorded outside the sweep
    assert groups["usps", "te"]["speedup_epochs"] == pytest.approx(1.2)
    assert data["excluded"] == {}  # the failed and interrupted runs' seeds are not in the grid


def test_statements_say_what_the_data_supports(db):
    statements = json.loads(report(db, "--format", "json"))["statements"]
    assert statements[0] == "mnist/te: no baseline runs for mnist; nothing to compare against."
    assert statements[1].startswith("usps/te vs baseline, 3 paired seeds, target 0.9 test_acc: speedup 1.20x in epochs")
    assert "1 of 4 baseline runs never reached 0.9 test_acc" in statements[1]
    assert "No significant difference in epochs to the target at 0.05" in statements[1]
    assert "with 3 pairs that differ the smallest attainable p is 0.2500" in statements[1]


def test_csv_parses_back_to_the_same_numbers(db):
    rows = list(csv.DictReader(io.StringIO(report(db, "--format", "csv"))))
    by_group = {(r["dataset"], r["variant"]): r for r in rows}
    te = by_group["usps", "te"]
    assert float(te["seconds_mean"]) == 2.625 and float(te["speedup_epochs"]) == pytest.approx(1.2)
    groups = {(g["dataset"], g["variant"]): g for g in json.loads(report(db, "--format", "json"))["groups"]}
    for key, row in by_group.items():
        for column in ("epochs_mean", "seconds_std", "final_acc_mean", "epoch_time_ratio", "p_epochs"):
            expected = groups[key][column]
            assert (row[column] == "" and expected is None) or float(row[column]) == pytest.approx(expected, rel=1e-12)
    assert (te["device"], te["threads"], te["cpu_model"], te["code_version"], te["mixed_conditions"]) == (
        "cpu", "1", "test cpu", "src:test", ""
    )


def test_target_on_the_command_line_overrides_the_sweep(db):
    data = json.loads(report(db, "--format", "json", "--target", "0.95", "--dataset", "usps"))
    groups = {g["variant"]: g for g in data["groups"]}
    assert (groups["baseline"]["n_reached"], groups["te"]["n_reached"]) == (1, 2)
    assert set(data["targets"]) == {"usps"}


def test_markdown_whole(db):
    assert report(db, "--format", "markdown", "--dataset", "usps") == EXPECTED_MARKDOWN


def test_html_file_holds_the_plots(db, tmp_path):
    out = tmp_path / "out" / "r.html"
    out.parent.mkdir()
    CliRunner().invoke(app, ["report", "--db", db[0], "--format", "html", "--output", str(out)])
    text = out.read_text()
    assert (tmp_path / "out" / "r-usps.png").is_file() and (tmp_path / "out" / "r-mnist.png").is_file()
    images = text.split('src="data:image/png;base64,')[1:]
    assert len(images) == 2
    assert all(base64.b64decode(i.split('"')[0])[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "usps/te vs baseline" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "pdf"], "--format must be one of"),
        (["--metric", "loss"], "--metric must be one of"),
        (["--target", "90"], "--target must be an accuracy"),
        (["--sweep", "nope"], "no sweep named 'nope'"),
        (["--dataset", "cifar10"], "no completed runs match"),
        (["--variant", "nope"], "no completed runs of variant 'nope'"),
        (["--format", "markdown", "--output", "/nonexistent/r.md"], "--output folder /nonexistent does not exist"),
        (["--output", "r.md"], "--output needs a file format"),
        (["--metric", "train_acc"], "--metric applies to --target"),
    ],
)
def test_report_mistakes(db, args, message):
    result = CliRunner().invoke(app, ["report", "--db", db[0], *args])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert message in result.output


EXPECTED_MARKDOWN = """\
# tecli report

Targets: usps 0.9 test_acc. Baseline variant: baseline.
Conditions of measurement: device cpu, threads 1, memory_format channels_last, cpu_model test cpu, code_version src:test (8 runs).
Epochs and seconds to target: mean ± std (median) over the runs that reached the target; seconds are cumulative epoch wall time, TE work and test evaluation included. Speedup: baseline / variant over seeds where both reached the target, two-sided Wilcoxon signed-rank p (with Holm's adjustment across a data set's variants beside it, where it has several). Median speedup: the median over those seeds of baseline / variant, with its percentile bootstrap 95% interval over seed pairs. Seconds (to target, epoch time, speedup) are compared only between runs measured under the same conditions (device and GPU, threads, memory format, CPU model, code version); where these differ they show as - and the statement names the difference.

## Per data set and variant

| data set | variant | n | reached | epochs to target | seconds to target | final test acc | epoch time vs baseline | TE share | speedup epochs (p) | median speedup epochs [95% CI] | speedup seconds (p) | median speedup seconds [95% CI] | runs |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| usps | baseline | 4 | 3 | 2.0 ± 1.0 (median 2.0) | 2.0 ± 1.0 (median 2.0) | 0.9150 ± 0.0451 | 1.000 | 0.0% | - | - | - | - | 1 3 5 7 |
| usps | te | 4 | 4 | 1.8 ± 0.5 (median 2.0) | 2.6 ± 0.8 (median 3.0) | 0.9375 ± 0.0222 | 1.500 | 20.0% | 1.20x (p P_EPOCHS) | 1.50x [0.50, 2.00] | 0.80x (p P_SECONDS) | 1.00x [0.33, 1.33] | 2 4 6 8 |

## What the numbers say

- usps/te vs baseline, 3 paired seeds, target 0.9 test_acc: speedup 1.20x in epochs (Wilcoxon p = P_EPOCHS; median per seed 1.50x, 95 % bootstrap interval 0.50 to 2.00), 0.80x in seconds (p = P_SECONDS); an epoch costs 1.50x the baseline's (1 of 4 baseline runs never reached 0.9 test_acc). No significant difference in epochs to the target at 0.05; with 3 pairs that differ the smallest attainable p is 0.2500, so more seeds are needed.

## Runs

| run | data set | variant | seed | epochs | epochs to target | seconds to target | final test acc | best test acc | mean epoch s | TE share | device | threads | code |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| 1 | usps | baseline | 0 | 3/3 | 2 | 2.0 | 0.9500 | 0.9500 | 1.00 | 0.0% | cpu | 1 | src:test |
| 3 | usps | baseline | 1 | 3/3 | 3 | 3.0 | 0.9200 | 0.9200 | 1.00 | 0.0% | cpu | 1 | src:test |
| 5 | usps | baseline | 2 | 3/3 | not reached | - | 0.8500 | 0.8500 | 1.00 | 0.0% | cpu | 1 | src:test |
| 7 | usps | baseline | 3 | 3/3 | 1 | 1.0 | 0.9400 | 0.9400 | 1.00 | 0.0% | cpu | 1 | src:test |
| 2 | usps | te | 0 | 3/3 | 1 | 1.5 | 0.9500 | 0.9500 | 1.50 | 20.0% | cpu | 1 | src:test |
| 4 | usps | te | 1 | 3/3 | 2 | 3.0 | 0.9300 | 0.9300 | 1.50 | 20.0% | cpu | 1 | src:test |
| 6 | usps | te | 2 | 3/3 | 2 | 3.0 | 0.9100 | 0.9100 | 1.50 | 20.0% | cpu | 1 | src:test |
| 8 | usps | te | 3 | 3/3 | 2 | 3.0 | 0.9600 | 0.9600 | 1.50 | 20.0% | cpu | 1 | src:test |

Not counted (not completed, or an older completed run of the same key): 1 failed, 1 interrupted.
""".replace("P_EPOCHS", f"{wilcoxon([2, 3, 1], [1, 2, 2]).pvalue:.3f}").replace(
    "P_SECONDS", f"{wilcoxon([2.0, 3.0, 1.0], [1.5, 3.0, 3.0]).pvalue:.3f}"
)


def test_identical_pairs_are_said_to_show_no_difference(tmp_path):
    engine = open_database(tmp_path / "same.db")
    sweep_id = register(engine, parse_sweep(SWEEP.replace("[datasets.mnist]\ntarget = 0.99\n", ""), tmp_path / "s.toml"))
    for seed in range(3):
        for te in (False, True):
            spec = RunSpec(dataset="usps", seed=seed, epochs=3, te=TEConfig() if te else None)
            epochs = [epoch_result(epoch, acc, 1.0, 0.1 if te else 0.0) for epoch, acc in enumerate((0.5, 0.95, 0.96), 1)]
            record_run(engine, spec, epochs, sweep_id=sweep_id, data_copy="c")
    statements = json.loads(report((str(tmp_path / "same.db"),), "--format", "json"))["statements"]
    assert statements[0].endswith("Every paired seed reached the target in the same epoch: no difference in epochs.")


# Conditions of measurement. The numbers are those of the module docstring; only the conditions change.
P_EPOCHS = wilcoxon([2, 3, 1], [1, 2, 2]).pvalue
P_SECONDS = wilcoxon([2.0, 3.0, 1.0], [1.5, 3.0, 3.0]).pvalue
SECONDS = ("seconds_mean", "seconds_std", "seconds_median", "mean_epoch_s", "epoch_time_ratio", "speedup_seconds", "p_seconds")
TWO_THREADS = dataclasses.replace(TEST_CONDITIONS, threads=2)
OLD_ROW = dataclasses.replace(TEST_CONDITIONS, threads=None, cpu_model=None, code_version=None, code_dirty=None)
NOT_COMPARED = "pass --mixed-conditions to compare them anyway."


def groups_of(data) -> dict:
    return {(g["dataset"], g["variant"]): g for g in data["groups"]}


def assert_usps_te_numbers_as_before(te):
    assert (te["epochs_mean"], te["epochs_std"], te["epochs_median"]) == (1.75, 0.5, 2.0)
    assert te["speedup_epochs"] == pytest.approx(1.2) and te["p_epochs"] == pytest.approx(P_EPOCHS)


def assert_usps_te_seconds_as_before(te):
    assert (te["seconds_mean"], te["seconds_std"], te["seconds_median"]) == (2.625, 0.75, 3.0)
    assert te["mean_epoch_s"] == 1.5 and te["epoch_time_ratio"] == pytest.approx(1.5)
    assert te["speedup_seconds"] == pytest.approx(0.8) and te["p_seconds"] == pytest.approx(P_SECONDS)


def test_baseline_and_te_on_different_threads_compare_epochs_only(tmp_path):
    db = fill(tmp_path, lambda te, seed: TWO_THREADS if te else TEST_CONDITIONS)
    data = json.loads(report(db, "--format", "json"))
    groups = groups_of(data)
    base, te = groups["usps", "baseline"], groups["usps", "te"]
    assert te["mixed_conditions"] == "threads (1, 2)" and te["threads"] == "2"
    assert all(te[column] is None for column in SECONDS)  # NaN in the frame, null in json
    assert_usps_te_numbers_as_before(te)
    assert te["pairs"] == 3 and te["te_share"] == pytest.approx(0.2)
    # The baseline's own runs agree: its seconds stand (2, 3, 1 s), as do mnist's (4 and 2 s).
    assert base["mixed_conditions"] == "" and (base["seconds_mean"], base["seconds_std"]) == (2.0, 1.0)
    assert base["epoch_time_ratio"] == 1.0 and groups["mnist", "te"]["seconds_mean"] == 3.0
    runs = {r["run_id"]: r for r in data["runs"]}
    assert (runs[1]["threads"], runs[2]["threads"]) == (1, 2)
    assert runs[2]["seconds_to_target"] == 1.5  # a run's own seconds are not a comparison
    assert data["statements"][1] == (
        f"usps/te vs baseline, 3 paired seeds, target 0.9 test_acc: speedup 1.20x in epochs (Wilcoxon p = {P_EPOCHS:.3f}; "
        "median per seed 1.50x, 95 % bootstrap interval 0.50 to 2.00)"
        " (1 of 4 baseline runs never reached 0.9 test_acc). No significant difference in epochs to the target at 0.05;"
        " with 3 pairs that differ the smallest attainable p is 0.2500, so more seeds are needed."
        " Seconds are not compared: runs differ in threads (1, 2); " + NOT_COMPARED
    )
    assert len(data["statements"]) == 2  # the baseline's runs agree among themselves: nothing to say about it

    markdown = report(db, "--format", "markdown", "--dataset", "usps")
    assert (
        f"| usps | te | 4 | 4 | 1.8 ± 0.5 (median 2.0) | - | 0.9375 ± 0.0222 | - | 20.0% | 1.20x (p {P_EPOCHS:.3f}) | 1.50x [0.50, 2.00] | - | - | 2 4 6 8 |"
        in markdown
    )
    assert "| usps | baseline | 4 | 3 | 2.0 ± 1.0 (median 2.0) | 2.0 ± 1.0 (median 2.0) |" in markdown
    assert "| 2 | usps | te | 0 | 3/3 | 1 | 1.5 | 0.9500 | 0.9500 | 1.50 | 20.0% | cpu | 2 | src:test |" in markdown
    assert (
        "Conditions of measurement: device cpu, threads 1, memory_format channels_last, cpu_model test cpu, "
        "code_version src:test (4 runs); device cpu, threads 2, memory_format channels_last, cpu_model test cpu, "
        "code_version src:test (4 runs)." in markdown
    )
    table = report(db, "--dataset", "usps")
    assert "Seconds are not compared: runs differ in threads (1, 2)" in table and "nan" not in table
    rows = {(r["dataset"], r["variant"]): r for r in csv.DictReader(io.StringIO(report(db, "--format", "csv")))}
    assert rows["usps", "te"]["seconds_mean"] == "" and rows["usps", "te"]["mixed_conditions"] == "threads (1, 2)"


def test_mixed_conditions_flag_compares_seconds_and_still_names_the_difference(tmp_path):
    db = fill(tmp_path, lambda te, seed: TWO_THREADS if te else TEST_CONDITIONS)
    data = json.loads(report(db, "--format", "json", "--mixed-conditions"))
    te = groups_of(data)["usps", "te"]
    assert_usps_te_numbers_as_before(te)
    assert_usps_te_seconds_as_before(te)
    assert te["mixed_conditions"] == "threads (1, 2)" and data["compare_mixed_conditions"] is True
    statement = data["statements"][1]
    assert f"0.80x in seconds (p = {P_SECONDS:.3f}); an epoch costs 1.50x the baseline's" in statement
    assert statement.endswith("Seconds compare runs that differ in threads (1, 2) (--mixed-conditions); read them with care.")
    markdown = report(db, "--format", "markdown", "--dataset", "usps", "--mixed-conditions")
    assert (
        f"| 2.6 ± 0.8 (median 3.0) | 0.9375 ± 0.0222 | 1.500 | 20.0% | 1.20x (p {P_EPOCHS:.3f}) | 1.50x [0.50, 2.00] | "
        f"0.80x (p {P_SECONDS:.3f}) | 1.00x [0.33, 1.33] |" in markdown
    )
    assert "Seconds are compared even between runs measured under different conditions (--mixed-conditions)" in markdown


def test_one_run_on_other_code_makes_its_group_epochs_only(tmp_path):
    other = dataclasses.replace(TEST_CONDITIONS, code_version="src:0ther")
    db = fill(tmp_path, lambda te, seed: other if te and seed == 3 else TEST_CONDITIONS)
    groups = groups_of(json.loads(report(db, "--format", "json")))
    te = groups["usps", "te"]
    assert te["mixed_conditions"] == "code_version (src:0ther, src:test)" and te["code_version"] == "src:0ther, src:test"
    assert all(te[column] is None for column in SECONDS)
    assert_usps_te_numbers_as_before(te)
    assert groups["usps", "baseline"]["seconds_mean"] == 2.0
    statements = json.loads(report(db, "--format", "json"))["statements"]
    assert statements[1].endswith("Seconds are not compared: runs differ in code_version (src:0ther, src:test); " + NOT_COMPARED)
    assert "in seconds" not in statements[1] and "an epoch costs" not in statements[1]
    mixed = json.loads(report(db, "--format", "json", "--mixed-conditions"))
    assert_usps_te_seconds_as_before(groups_of(mixed)["usps", "te"])
    assert "Seconds compare runs that differ in code_version (src:0ther, src:test) (--mixed-conditions)" in mixed["statements"][1]


def test_a_run_resumed_on_other_threads_mixes_its_group(tmp_path):
    """A TE run whose second attempt ran on 2 threads measured its epochs under both."""
    db = fill(tmp_path)
    engine = open_database(db[0])
    with Session(engine) as session, session.begin():
        te_seed_3 = session.scalar(select(Run.id).where(Run.variant == "te", Run.seed == 3, Run.dataset == "usps"))
        first = session.scalars(select(RunAttempt).where(RunAttempt.run_id == te_seed_3)).one()
        session.add(RunAttempt(
            run_id=te_seed_3, number=2, first_epoch=2, status="completed", started_at=first.started_at, host="h",
            pid=1, device="cpu", threads=2, memory_format="channels_last", cpu_model="test cpu", code_version="src:test",
        ))  # fmt: skip
    te = groups_of(json.loads(report(db, "--format", "json")))["usps", "te"]
    assert te["mixed_conditions"] == "threads (1, 1 + 2)"
    assert all(te[column] is None for column in SECONDS)
    assert_usps_te_numbers_as_before(te)
    assert "1 + 2" in report(db)  # the terminal tables name it too


def test_an_old_row_without_conditions_in_the_baseline(tmp_path):
    """A baseline run recorded before conditions were (NULL threads, CPU model, code version),
    beside runs that have them: the baseline's seconds are not comparable among themselves."""
    db = fill(tmp_path, lambda te, seed: OLD_ROW if not te and seed == 1 else TEST_CONDITIONS)
    data = json.loads(report(db, "--format", "json"))
    groups = groups_of(data)
    base, te = groups["usps", "baseline"], groups["usps", "te"]
    differ = "threads (1, unknown); cpu_model (test cpu, unknown); code_version (src:test, unknown)"
    assert base["mixed_conditions"] == differ and te["mixed_conditions"] == differ
    assert all(base[column] is None and te[column] is None for column in SECONDS)
    assert (base["epochs_mean"], base["epochs_std"]) == (2.0, 1.0)
    assert_usps_te_numbers_as_before(te)
    named = "threads (1, unknown), cpu_model (test cpu, unknown) and code_version (src:test, unknown)"
    assert data["statements"][1:] == [
        f"usps/baseline: Seconds are not compared: runs differ in {named}; " + NOT_COMPARED,
        data["statements"][2],
    ]
    assert data["statements"][2].endswith(f"Seconds are not compared: runs differ in {named}; " + NOT_COMPARED)
    runs = {r["run_id"]: r for r in data["runs"]}
    assert (runs[3]["threads"], runs[3]["cpu_model"], runs[3]["code_version"]) == (None, None, None)
    markdown = report(db, "--format", "markdown", "--dataset", "usps")
    assert "| 3 | usps | baseline | 1 | 3/3 | 3 | 3.0 | 0.9200 | 0.9200 | 1.00 | 0.0% | cpu | unknown | unknown |" in markdown
    assert "| usps | baseline | 4 | 3 | 2.0 ± 1.0 (median 2.0) | - | 0.9150 ± 0.0451 | - | 0.0% | - | - | - | - | 1 3 5 7 |" in markdown


def test_null_conditions_equal_themselves(tmp_path):
    """Every usps run is an old row: unknown equals unknown, so seconds are compared as before."""
    db = fill(tmp_path, lambda te, seed: OLD_ROW)
    data = json.loads(report(db, "--format", "json", "--dataset", "usps"))
    te = groups_of(data)["usps", "te"]
    assert te["mixed_conditions"] == "" and te["threads"] == "unknown"
    assert_usps_te_numbers_as_before(te)
    assert_usps_te_seconds_as_before(te)
    assert "Seconds" not in data["statements"][0]


# The report computes in plain Python what it computed with pandas, NumPy and SciPy before
# (tecli/report/arithmetic.py and wilcoxon.py): these tests hold the numbers to the last bit.


def wilcoxon_cases() -> list[tuple]:
    rng = np.random.default_rng(0)
    cases = [([2, 3, 1], [1, 2, 2]), ([2.0, 3.0, 1.0], [1.5, 3.0, 3.0]), ([1, 2, 3, 4], [1, 1, 1, 1])]
    for n in (3, 5, 8, 12, 13, 14, 20, 49, 50, 51, 80, 200, 600):
        cases.append((rng.normal(size=n), rng.normal(size=n)))  # no ties: exact up to 50 pairs
        cases.append((rng.integers(1, 20, n), rng.integers(1, 20, n)))  # ties and zeros: exact up to 13 pairs
        cases.append((np.round(rng.normal(0.5, 1, n), 1), np.round(rng.normal(0, 1, n), 1)))  # a few ties
        cases.append((rng.normal(size=n) + n**0.5, rng.normal(size=n)))  # small p, far in the normal tail
    return cases


@pytest.mark.skipif(tuple(map(int, scipy.__version__.split(".")[:2])) < (1, 15), reason="SciPy < 1.15 approximates small tied samples")
@pytest.mark.parametrize("x, y", wilcoxon_cases())
def test_wilcoxon_p_is_scipys(x, y):
    assert wilcoxon_p(list(x), list(y)) == wilcoxon(x, y).pvalue


def test_normal_tail_is_scipys():
    z = np.linspace(0, 40, 40_001)
    assert [_normal_sf(v) for v in z.tolist()] == ndtr(-z).tolist()


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 15, 16, 17, 50, 127, 128, 129, 300, 1000])
def test_sums_means_and_deviations_are_numpys(n):
    values = np.random.default_rng(n).uniform(0.1, 3.0, n)
    listed = values.tolist()
    assert pairwise_sum(listed) == np.add.reduce(values)
    assert group_sum(listed) == np.add.reduceat(values, [0])[0]
    assert mean(listed) == np.mean(values) and median(listed) == np.median(values)
    if n > 1:
        assert std(listed) == np.std(values, ddof=1)
    assert running_sums(listed) == pd.Series(values).groupby(np.zeros(n)).cumsum().tolist()


def test_float_measures_are_numpys_and_scipys(tmp_path):
    """Random seconds and accuracies: each run's numbers come from its epochs, each group's from its runs."""
    engine = open_database(tmp_path / "floats.db")
    rng = np.random.default_rng(1)
    for seed in range(8):
        for te in (False, True):
            spec = RunSpec(dataset="usps", seed=seed, epochs=6, te=TEConfig() if te else None)
            accs, seconds = np.sort(rng.uniform(0.7, 1.0, 6)), rng.uniform(0.5, 2.0, 6)
            te_seconds = rng.uniform(0, 0.3, 6) if te else np.zeros(6)
            record_run(engine, spec, [epoch_result(e, *map(float, v)) for e, v in enumerate(zip(accs, seconds, te_seconds), 1)])
    result = build_report(engine, target=0.85)
    with engine.connect() as connection:
        epochs = pd.read_sql("SELECT run_id, epoch, test_acc, seconds, te_seconds FROM epochs ORDER BY run_id, epoch", connection)
    for run in result.runs:
        own = epochs[epochs.run_id == run["run_id"]]
        reached = own[own.test_acc >= 0.85]
        total = np.add.reduceat(own.seconds.to_numpy(), [0])[0]  # as pandas' groupby sum
        assert (run["total_s"], run["mean_epoch_s"]) == (total, total / 6)
        assert run["te_share"] == np.add.reduceat(own.te_seconds.to_numpy(), [0])[0] / total
        first = reached.index[0] if len(reached) else None
        assert run["epochs_to_target"] == (None if first is None else own.epoch[first])
        assert run["seconds_to_target"] == (None if first is None else own.groupby("run_id").seconds.cumsum()[first])
    runs = pd.DataFrame(result.runs)
    base, te = (runs[runs.variant == v] for v in ("baseline", "te"))
    group = result.groups[1]
    assert group["final_acc_mean"] == te.final_acc.mean() and group["final_acc_std"] == te.final_acc.std()
    assert group["epoch_time_ratio"] == te.mean_epoch_s.mean() / base.mean_epoch_s.mean()
    paired = base.set_index("seed").seconds_to_target.to_frame("b").join(te.set_index("seed").seconds_to_target).dropna()
    assert group["speedup_seconds"] == paired.b.mean() / paired.seconds_to_target.mean()
    assert group["p_seconds"] == wilcoxon(paired.b, paired.seconds_to_target).pvalue


def test_csv_and_json_are_what_pandas_wrote(db):
    """csv and json, written without pandas since the report dropped it, are byte for byte
    what DataFrame.to_csv and to_json(double_precision=15) wrote of the same rows."""
    from test_report_records import pandas_frame, pandas_records

    engine = open_database(db[0], create=False)
    result = build_report(engine)
    engine.dispose()
    assert report(db, "--format", "csv") == pandas_frame(result.groups, AS_IS).to_csv(index=False)
    data = json.loads(report(db, "--format", "json"))
    assert json.dumps(data["groups"]) == json.dumps(pandas_records(result.groups, AS_IS))
    assert json.dumps(data["runs"]) == json.dumps(pandas_records(result.runs, AS_IS))


def test_text_reports_import_neither_pandas_nor_numpy_nor_scipy(db):
    """What makes `tecli report` fast: only plots import matplotlib and NumPy."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from tecli.cli import app\n"
        "for fmt in ('table', 'markdown', 'html', 'csv', 'json'):\n"
        f"    assert CliRunner().invoke(app, ['report', '--db', {db[0]!r}, '--format', fmt]).exit_code == 0\n"
        "print(','.join(sorted(m for m in ('pandas', 'numpy', 'scipy', 'matplotlib') if m in sys.modules)))\n"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == ""


def test_curves_of_many_variants_keep_their_legend_below_without_a_layout_warning(tmp_path):
    """The committed exploration (39 variants on usps): the legend goes below the panels,
    and matplotlib lays the figure out without warning that it could not."""
    import shutil
    import warnings

    from PIL import Image

    db = tmp_path / "explore.db"
    shutil.copy(Path(__file__).resolve().parent.parent / "reports" / "study-explore.db", db)
    out = tmp_path / "r.md"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = CliRunner().invoke(app, ["report", "--db", str(db), "--format", "markdown", "--output", str(out)])
    assert result.exit_code == 0, result.output
    width, height = Image.open(tmp_path / "r-usps.png").size
    assert height > 4 * 110 * 1.5  # taller than the 4-inch panels: room for 39 legend entries
