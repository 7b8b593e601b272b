"""Sweep files that express studies: parameter grids and their names, variants with training
parameters, --set overrides and the recorded effective file, every problem listed, --dry-run."""

import hashlib
import sqlite3
import tomllib
from datetime import timedelta
from pathlib import Path
from shutil import copyfile

import pytest
from sqlalchemy import inspect, select, update
from sqlalchemy.orm import Session
from sweeps import TINY, invoke, write

from recorded import epoch_result, record_run
from tecli.conditions import code_version
from tecli.db.schema import Run, RunStatus, Sweep, utcnow
from tecli.db.store import create_db_engine, open_database
from tecli.errors import UserError
from tecli.spec import RunSpec, TEConfig
from tecli.sweep.dry_run import dry_run
from tecli.sweep.file import MAX_PROBLEMS, SweepFileError, load_sweep, parse_sweep
from tecli.sweep.plan import PastRun, plan_from

ROOT = Path(__file__).resolve().parent.parent
GRID = TINY.format(epochs=1, extra="").replace("lam = 2.0", 'lam = [1, 4]\nmode = ["amplify", "dampen"]')


def sweep_of(text: str):
    return parse_sweep(text, Path("grid.toml"))


def variants(sweep) -> list[str]:
    return list(dict.fromkeys(spec.variant for spec in sweep.runs))


def test_lists_expand_to_their_product_with_readable_names():
    sweep = sweep_of(GRID)
    names = ["te(lam=1.0,mode=amplify)", "te(lam=1.0,mode=dampen)", "te(lam=4.0,mode=amplify)", "te(lam=4.0,mode=dampen)"]
    assert variants(sweep) == ["baseline", *names]
    assert len(sweep.runs) == 2 * 5  # seeds x variants
    te = {spec.variant: spec.te for spec in sweep.runs if spec.seed == 0}
    assert te["baseline"] is None
    assert te["te(lam=4.0,mode=dampen)"] == TEConfig(window=128, lam=4.0, mode="dampen")
    assert {spec.lr for spec in sweep.runs} == {0.05}


def test_names_are_stable_and_name_the_canonical_values():
    first, again = sweep_of(GRID), sweep_of(GRID)
    assert [(s.variant, s.run_key()) for s in first.runs] == [(s.variant, s.run_key()) for s in again.runs]
    # 1 and 1.0 are one value, and so one name and one run key
    floats = sweep_of(GRID.replace("lam = [1, 4]", "lam = [1.0, 4.0]"))
    assert [s.run_key() for s in floats.runs] == [s.run_key() for s in first.runs]
    # layers is itself a list: a list of lists is its grid, indices named from the end, sorted
    layers = sweep_of(TINY.format(epochs=1, extra="").replace("lam = 2.0", "layers = [[2], [-1, -2]]"))
    assert variants(layers) == ["baseline", "te(layers=[-1])", "te(layers=[-2,-1])"]
    single = sweep_of(TINY.format(epochs=1, extra="").replace("lam = 2.0", "layers = [-2, -1]"))
    assert variants(single) == ["baseline", "te"] and single.runs[1].te.layers == (-2, -1)
    # a one-value list is a dimension: growing it later keeps the names and keys of runs done
    one = sweep_of(GRID.replace("lam = [1, 4]", "lam = [1]"))
    assert variants(one)[1:] == ["te(lam=1.0,mode=amplify)", "te(lam=1.0,mode=dampen)"]
    assert {s.run_key() for s in one.runs} <= {s.run_key() for s in first.runs}


def test_threshold_names_numbers_and_permute_mix_in_one_grid():
    text = TINY.format(epochs=1, extra="").replace(
        "lam = 2.0", 'threshold = "median"\nthreshold_out = ["argmax", "uniform", 0.5]\npermute = [false, true]'
    )
    sweep = sweep_of(text)
    names = [f"te(permute={p},threshold_out={t})" for p in ("false", "true") for t in ("argmax", "uniform", "0.5")]
    assert variants(sweep) == ["baseline", *names]
    te = {spec.variant: spec.te for spec in sweep.runs if spec.seed == 0}
    assert te["te(permute=true,threshold_out=argmax)"] == TEConfig(window=128, threshold="median", threshold_out="argmax", permute=True)
    assert te["te(permute=false,threshold_out=0.5)"] == TEConfig(window=128, threshold="median")
    assert len({spec.run_key() for spec in sweep.runs}) == len(sweep.runs)
    bad = text.replace('threshold = "median"', 'threshold = ["median", "argmax"]').replace("[false, true]", '"yes"')
    with pytest.raises(SweepFileError) as raised:
        sweep_of(bad)
    assert raised.value.problems == [
        "grid.toml: variants.te.threshold[1] (line 20): expected a number or median, got 'argmax'",
        "grid.toml: variants.te.permute (line 22): expected true or false, got 'yes'",
    ]


def test_lists_in_defaults_and_datasets_name_the_runs_they_apply_to():
    text = (
        TINY.format(epochs=1, extra="[datasets.usps]\nepochs = 3\n")
        .replace("lr = 0.05", "lr = [0.05, 0.1]")
        .replace("window = 128", "window = 128\nfraction = [0.5, 1.0]")
        .replace("target = 0.8", "target = 0.8\nepochs = [1, 2]")
        + "\n[variants.te-lr]\nte = true\nlr = 0.2\n"
    )
    sweep = sweep_of(text)
    digits = [s for s in sweep.runs if s.dataset == "digits" and s.seed == 0]
    usps = [s.variant for s in sweep.runs if s.dataset == "usps" and s.seed == 0]
    assert [s.variant for s in digits][:2] == ["baseline(epochs=1,lr=0.05)", "baseline(epochs=1,lr=0.1)"]
    assert "te(epochs=2,fraction=1.0,lam=2.0,lr=0.1)" not in usps  # lam is a scalar: not named
    assert "te(epochs=2,fraction=1.0,lr=0.1)" in [s.variant for s in digits]
    assert "te-lr(epochs=1,fraction=0.5)" in [s.variant for s in digits]  # its own lr replaces the list
    assert usps == [
        "baseline(lr=0.05)", "baseline(lr=0.1)",
        "te(fraction=0.5,lr=0.05)", "te(fraction=0.5,lr=0.1)", "te(fraction=1.0,lr=0.05)", "te(fraction=1.0,lr=0.1)",
        "te-lr(fraction=0.5)", "te-lr(fraction=1.0)",
    ]  # fmt: skip
    # never two parameter sets under one data set, variant name and seed
    assert len({(s.dataset, s.variant, s.seed) for s in sweep.runs}) == len({s.run_key() for s in sweep.runs}) == len(sweep.runs)


def test_a_file_without_lists_keeps_its_run_keys_and_the_committed_study_is_done(tmp_path):
    copy = tmp_path / "study.db"  # a copy: reading leaves SQLite's -shm and -wal beside the file
    copyfile(ROOT / "reports" / "paper-offline.db", copy)
    before = copy.read_bytes()
    recorded = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    with recorded:
        keys = {key for (key,) in recorded.execute("SELECT run_key FROM runs WHERE status = 'completed'")}
    recorded.close()
    assert {spec.run_key() for spec in load_sweep(ROOT / "experiments.toml").runs} == keys
    result = invoke("sweep", ROOT / "experiments.toml", "--dry-run", "--db", copy)
    assert result.exit_code == 0, result.output
    assert "40 runs: 40 done" in result.output
    assert "grid: 4 data sets × 5 seeds × 2 variants = 40 runs" in result.output
    assert "time left: nothing left to train" in result.output
    assert copy.read_bytes() == before  # read as it is: not upgraded, nothing marked


def test_variants_may_set_training_parameters():
    text = TINY.format(epochs=1, extra="") + "\n[variants.baseline-lr02]\nte = false\nlr = 0.02\nepochs = 3\n"
    runs = {spec.variant: spec for spec in sweep_of(text).runs if spec.seed == 0}
    assert (runs["baseline-lr02"].lr, runs["baseline-lr02"].epochs, runs["baseline-lr02"].te) == (0.02, 3, None)
    assert (runs["baseline"].lr, runs["baseline"].epochs) == (0.05, 1)
    assert runs["baseline"].run_key() == RunSpec(dataset="digits", epochs=1, lr=0.05, variant="baseline").run_key()
    with pytest.raises(SweepFileError, match=r"variants.baseline-lr02.lam \(line 26\): TE parameter on a variant with te = false"):
        sweep_of(text + "lam = 2.0\n")


def test_set_overrides_file_values(tmp_path):
    sweep_file = write(tmp_path, epochs=2)
    result = invoke(
        "sweep", sweep_file, "--dry-run", "--db", tmp_path / "s.db",
        "--set", "defaults.te.lam=[1,4]", "--set", "seeds=[0]", "--set", "datasets.digits.epochs=1",
        "--set", 'variants.te.mode="dampen"',
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "grid: 1 data set × 1 seed × 2 variants = 2 runs" in result.output
    assert "te(lam=1.0)" not in result.output  # the variant's own lam = 2.0 wins over defaults.te
    sweep = load_sweep(sweep_file, ["defaults.te.lam=[1,4]", "variants.te.lam=[1,4]", "seeds=[0]", "datasets.digits.epochs=1"])
    assert variants(sweep) == ["baseline", "te(lam=1.0)", "te(lam=4.0)"]
    assert {(s.seed, s.epochs) for s in sweep.runs} == {(0, 1)}
    dotted = tmp_path / "dotted.toml"
    dotted.write_text(TINY.format(epochs=1, extra="") + '\n[variants."lr.02"]\nte = false\n')
    assert {s.lr for s in load_sweep(dotted, ['variants."lr.02".lr=0.02']).runs if s.variant == "lr.02"} == {0.02}
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize(
    "setting, message",
    [
        ("epochs", "--set epochs: expected KEY.PATH=VALUE, such as defaults.te.lam=[1,4]"),
        ("defaults.te.mode=dampen", "--set defaults.te.mode=dampen: the value 'dampen' is not a TOML value (strings need quotes"),
        ("seeds=", "--set seeds=: the value '' is not a TOML value"),
        ("defaults.te.lamda=2", "--set defaults.te.lamda=2: defaults.te.lamda is not a key of"),
        ("datasets.usps.epochs=5", "tiny.toml has no [datasets.usps] table; add it to the file"),
        ("variants.te.lam.x=1", "variants.te.lam.x is not a key of"),
        ("defaults.te.lam=-1", "tiny.toml: defaults.te.lam (--set): expected a finite number >= 0, got -1.0"),
    ],
)
def test_a_bad_set_is_one_line_and_writes_nothing(tmp_path, setting, message):
    db = tmp_path / "s.db"
    result = invoke("sweep", write(tmp_path), "--set", setting, "--db", db)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [result.output.strip()] and message in result.output
    assert "Traceback" not in result.output and not db.exists()


def test_the_effective_file_is_recorded_and_dry_run_estimates_from_its_epochs(db_url, tmp_path):
    """A real 1-epoch sweep with --set records the file with its overrides; a dry run of a
    larger grid then plans against it, read-only, and estimates from its epoch times."""
    sweep_file = write(tmp_path, epochs=1)
    overrides = ["seeds=[0]", "variants.te.lam=[4]"]
    result = invoke("sweep", sweep_file, *[a for o in overrides for a in ("--set", o)], "--threads", 1, "--db", db_url)
    assert result.exit_code == 0, result.output
    assert "2 completed, 0 failed" in result.output
    engine = create_db_engine(db_url)
    with Session(engine) as session:
        row = session.scalar(select(Sweep))
        completed = set(session.scalars(select(Run.run_key).where(Run.status == RunStatus.COMPLETED)))
    loaded = tomllib.loads(row.source)
    assert loaded["seeds"] == [0] and loaded["variants"]["te"]["lam"] == [4]
    assert loaded["defaults"] == {"epochs": 1, "lr": 0.05, "te": {"window": 128}}
    assert "#   seeds = [0]\n#   variants.te.lam = [4]\n" in row.source  # the overrides, in comments
    assert "# | " + sweep_file.read_text().splitlines()[1] in row.source  # the file as written, in comments
    assert row.source_hash == hashlib.sha256(row.source.encode()).hexdigest()
    assert {s.run_key() for s in parse_sweep(row.source, Path("recorded")).runs} == completed  # what the report re-expands

    preview = dry_run(sweep_file, db_url, overrides=["seeds=[0, 1]", "variants.te.lam=[4, 8]"])
    assert [p.state for p in preview.planned].count("done") == 2 and len(preview.planned) == 6
    assert preview.grid() == ({"digits": 3}, 2)
    estimates = {e.variant: e for e in preview.estimates}
    assert estimates["baseline"].basis == "variant" and estimates["te(lam=8.0)"].basis == "data set"
    assert (estimates["te(lam=8.0)"].runs, estimates["te(lam=8.0)"].epochs_left) == (2, 2)
    assert preview.seconds_left() == pytest.approx(sum(e.seconds for e in preview.estimates))
    printed = invoke("sweep", sweep_file, "--dry-run", "--db", db_url, "--set", "seeds=[0,1]", "--set", "variants.te.lam=[4,8]")
    assert printed.exit_code == 0, printed.output
    assert "6 runs: 2 done, 4 to run" in printed.output
    assert "time left: about " in printed.output and "digits/te(lam=8.0): 2 runs, 2 epochs × " in printed.output
    with Session(engine) as session:
        assert len(session.scalars(select(Sweep)).all()) == 1  # the dry runs recorded nothing


def test_every_problem_is_listed_with_its_line_and_nothing_is_written(tmp_path):
    text = TINY.format(epochs="[1, 0]", extra="[datasets.nosuch]\n").replace(
        'name = "tiny"', 'name = "tiny"\ncolour = 3'
    ).replace("lam = 2.0", "lam = [1, 1.0]\nmode = 'loud'").replace("te = false", "te = false\nlam = 1.0\nmomentum = 1.5")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    db = tmp_path / "s.db"
    result = invoke("sweep", path, "--db", db)
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"error: {path}: colour (line 3): unknown key (allowed: datasets, defaults, description, name, observe, seeds, variants)",
        f"error: {path}: defaults.epochs[1] (line 7): expected an integer >= 1, got 0",
        f"error: {path}: datasets.nosuch (line 15): unknown data set (known: digits, usps, mnist, fashionmnist, cifar10, svhn, stl10)",
        f"error: {path}: variants.baseline.lam (line 19): TE parameter on a variant with te = false",
        f"error: {path}: variants.baseline.momentum (line 20): expected a finite number in [0, 1), got 1.5",
        f"error: {path}: variants.te.lam (line 24): values repeat: [1, 1.0]",
        f"error: {path}: variants.te.mode (line 25): expected one of amplify, dampen, got 'loud'",
    ]
    assert not db.exists()
    assert invoke("sweep", path, "--dry-run", "--db", db).exit_code == 2 and not db.exists()


def test_problems_beyond_the_cap_are_counted(tmp_path):
    extra = "".join(f"unknown{i} = 1\n" for i in range(MAX_PROBLEMS + 5))
    path = tmp_path / "many.toml"
    path.write_text(TINY.format(epochs=1, extra="").replace("lr = 0.05", "lr = 0.05\n" + extra))
    result = invoke("sweep", path, "--db", tmp_path / "s.db")
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == MAX_PROBLEMS + 1 and lines[-1] == "error: ... and 5 more"
    assert lines[0] == f"error: {path}: defaults.unknown0 (line 8): unknown key (allowed: batch_size, epochs, lr, metric, model, momentum, stop_at, te, weight_decay)"
    with pytest.raises(SweepFileError) as raised:
        load_sweep(path)
    assert len(raised.value.problems) == MAX_PROBLEMS + 5 and isinstance(raised.value, UserError)


def test_a_name_too_long_for_the_database_is_a_problem():
    text = TINY.format(epochs=1, extra="").replace("[variants.te]", f"[variants.{'t' * 90}]").replace("lam = 2.0", "lam = [1e-05, 2]")
    with pytest.raises(SweepFileError, match=r"are longer than 100 characters; shorten the variant's name or list fewer"):
        sweep_of(text)


def test_dry_run_on_an_absent_database_creates_nothing(tmp_path):
    db = tmp_path / "none.db"
    result = invoke("sweep", write(tmp_path), "--dry-run", "--db", db)
    assert result.exit_code == 0, result.output
    assert "4 runs: 4 to run" in result.output
    assert "grid: 1 data set × 2 seeds × 2 variants = 4 runs" in result.output
    assert "time left: no recorded epochs to estimate from" in result.output
    assert not db.exists()


def test_dry_run_estimates_from_recorded_epoch_seconds(tmp_path):
    """Recorded epochs of 2 s (baseline) and 3 s (te): each variant's median × its epochs left;
    a dead owner's run counts as interrupted (to run), and the database is left as it was."""
    db, sweep_file = tmp_path / "e.db", write(tmp_path, epochs=4)
    sweep = load_sweep(sweep_file)
    engine = open_database(db)
    baseline0, te0, baseline1, te1 = sweep.runs
    record_run(engine, baseline0, [epoch_result(e, seconds=2.0) for e in range(1, 5)])
    record_run(engine, te0, [epoch_result(e, seconds=3.0) for e in range(1, 5)])
    dead = record_run(engine, te1, [epoch_result(1, seconds=3.0)], status=None)
    with Session(engine) as session, session.begin():  # its machine went silent a lease ago
        session.execute(update(Run).where(Run.id == dead).values(host="elsewhere", heartbeat_at=utcnow() - timedelta(seconds=301)))
    engine.dispose()
    result = invoke("sweep", sweep_file, "--dry-run", "--db", db)
    assert result.exit_code == 0, result.output
    assert "4 runs: 2 done, 2 to run" in result.output
    assert "time left: about 20 s of training, one run at a time" in result.output
    assert "digits/baseline: 1 run, 4 epochs × 2.00 s = 8.0 s" in result.output
    assert "digits/te: 1 run, 4 epochs × 3.00 s = 12 s" in result.output
    with Session(create_db_engine(db)) as session:
        assert session.get(Run, dead).status == RunStatus.RUNNING  # seen as dead, not marked

    stopping = invoke("sweep", sweep_file, "--dry-run", "--db", db, "--set", "defaults.stop_at=0.5")  # new run keys
    assert stopping.exit_code == 0, stopping.output
    assert "time left: at most 40 s of training" in stopping.output and "maybe sooner" in stopping.output
    assert "digits/te: 2 runs, at most 8 epochs × 3.00 s = 24 s" in stopping.output


def test_a_resumed_run_counts_the_epochs_after_its_checkpoint():
    sweep = sweep_of(TINY.format(epochs=10, extra=""))
    baseline = sweep.runs[0].run_key()
    planned = plan_from(sweep, {baseline: [PastRun(RunStatus.INTERRUPTED, code_version(), 6)]}, retry_failed=False)
    assert (planned[0].state, planned[0].epochs_done) == ("resume", 6)
    restarted = plan_from(sweep, {baseline: [PastRun(RunStatus.INTERRUPTED, code_version(), 6)]}, False, resume=False)
    assert (restarted[0].state, restarted[0].epochs_done) == ("to run", 0)


def test_dry_run_against_a_server_database_without_tables_creates_none(pg_url):
    preview = dry_run(ROOT / "experiments.toml", pg_url)
    assert [p.state for p in preview.planned] == ["to run"] * 40
    assert not inspect(create_db_engine(pg_url)).get_table_names()
