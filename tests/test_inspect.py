"""`tecli inspect` and the report's information-flow table on real observed digits runs."""

import subprocess
import sys

import pytest
from sweeps import invoke


@pytest.fixture(scope="module")
def observed_db(tmp_path_factory):
    """A baseline and a TE run observed with the same seed (runs 1 and 2), and an unobserved baseline (run 3)."""
    db = tmp_path_factory.mktemp("inspect") / "o.db"
    common = ["run", "--dataset", "digits", "--epochs", "2", "--lr", "0.05", "--seed", "2", "--db", db]
    for args in ([*common, "--observe"], [*common, "--observe", "--te", "--te-threshold-out", "0.1"], [*common, "--seed", "5"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
    return db


def test_inspect_writes_tables_a_figure_or_both(observed_db, tmp_path):
    for form in ("md", "png", "html"):
        output = tmp_path / f"flow.{form}"
        result = invoke("inspect", "1", "2", "--output", output, "--db", observed_db)
        assert result.exit_code == 0, result.output
        assert result.output.strip() == f"wrote {output}"
    md = (tmp_path / "flow.md").read_text()
    assert md.startswith("# tecli inspect: runs 1, 2")
    assert "## run 1: digits/baseline, seed 2, probe of 512 training samples" in md and "## run 2: digits/te, seed 2" in md
    assert "| epoch | run 1 removes first | run 1 class I(T;Y) | run 2 removes first | run 2 class I(T;Y) |" in md
    assert md.count("| 2 | class | 10 |") == 2  # each run's class layer at epoch 2
    ranking = [line for line in md.splitlines() if line.startswith("| 1 | ") and " < " in line]
    assert len(ranking) == 2 and all("class" not in line for line in ranking)  # hidden layers only
    assert (tmp_path / "flow.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    page = (tmp_path / "flow.html").read_text()
    assert '<img alt="information flow" src="data:image/png;base64,' in page and "<h2>Side by side</h2>" in page
    assert page.count("<h3>Layer-entropy ranking</h3>") == 2


@pytest.mark.parametrize(
    "run_ids, output, db, message",
    [
        (["1", "99"], "out.md", None, "error: no run with id 99; `tecli runs` lists the recorded runs"),
        (["1", "3"], "out.md", None, "error: run 3 has no observations (it trained without --observe"),
        (["1"], "out.txt", None, "error: --output must end in .md, .png, .html, got 'out.txt'"),
        (["1"], "missing/out.md", None, "error: --output folder"),
        (["1"], "out.png", "nothing.db", "error: no database at"),
    ],
)
def test_inspect_mistakes_are_one_line_exit_2_and_write_nothing(observed_db, tmp_path, run_ids, output, db, message):
    database = tmp_path / db if db else observed_db
    result = invoke("inspect", *run_ids, "--output", tmp_path / output, "--db", database)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # no output, no database created


def test_the_report_shows_each_variants_mean_information_flow(observed_db, tmp_path):
    md = invoke("report", "--format", "markdown", "--db", observed_db)
    assert md.exit_code == 0, md.output
    section = md.output.split("## Information flow", 1)[1].split("## Runs", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| digits |")]
    # baseline: runs 1 (observed) and 3 (not): the mean is over the one that observed
    assert [row.split(" | ")[1:4] for row in rows] == [
        [variant, layer, "1"] for variant in ("baseline", "te") for layer in ("conv1", "fc1", "fc2", "class")
    ]
    assert all(len(row.split(" | ")[4].split()) == 2 for row in rows)  # two epochs per cell
    page = invoke("report", "--format", "html", "--output", tmp_path / "r.html", "--db", observed_db)
    assert page.exit_code == 0, page.output
    assert "<h2>Information flow</h2>" in (tmp_path / "r.html").read_text()


def test_a_report_without_observations_does_not_load_their_code(tmp_path):
    db = tmp_path / "plain.db"
    result = invoke("run", "--dataset", "digits", "--epochs", "1", "--db", db)
    assert result.exit_code == 0, result.output
    code = (
        "import sys; from tecli.db.store import open_database; from tecli.report.build import build_report; "
        f"report = build_report(open_database({str(db)!r}, create=False)); "
        "print(report.observed, 'tecli.report.observed' in sys.modules, 'numpy' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[]", "False", "False"]
