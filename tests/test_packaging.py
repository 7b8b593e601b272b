"""The wheel is complete: installed from it (not from this checkout), `tecli db upgrade` creates a database.

The migrations live inside the package (tecli/db/migrations, package-data in
pyproject.toml); a wheel without them installs fine and fails at the first command
that opens a database. The test builds the wheel offline with this environment's
setuptools, installs it alone into a fresh virtual environment, lends that
environment this one's site-packages for the heavy dependencies (torch, SQLAlchemy,
Alembic, ...) through a .pth file, and runs the installed `tecli` console script.
"""

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tecli.db.store import SCHEMA_HEAD

REPO = Path(__file__).resolve().parents[1]
TABLES = {"sweeps", "runs", "attempts", "epochs", "claims", "checkpoints", "alembic_version"}
# What a build leaves in the source tree, and what is not part of it.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "*.db*")


def run(*args, cwd: Path, env: dict) -> str:
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(map(str, args))[:300]}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_wheel_installs_and_creates_a_database(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "TECLI_DB")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")

    # Build from a copy, so that setuptools' build/ and egg-info stay out of the shared checkout.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", source, "-w", wheels,
        cwd=tmp_path, env=env)  # fmt: skip
    (wheel,) = wheels.glob("tecli-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    versions = sorted((REPO / "tecli/db/migrations/versions").glob("*.py"))
    assert versions, "no migrations found in the checkout"
    expected = {"tecli/db/migrations/env.py", "tecli/db/migrations/script.py.mako"}
    expected |= {f"tecli/db/migrations/versions/{p.name}" for p in versions}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    # Install before the .pth exists: pip then sees no tecli (this checkout's editable one) to compare with.
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", wheel, cwd=tmp_path, env=env)
    venv_site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path, env=env).strip())
    # A plain path line: the directory joins sys.path after the venv's own, and its .pth files
    # (the editable install's finder among them) are not run.
    (venv_site / "tecli_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = run(python, "-c", "import tecli, tecli.db.migrate as m; print(tecli.__file__); print(m.MIGRATIONS)", cwd=tmp_path, env=env)
    package_file, migrations = map(Path, where.split())
    assert package_file.is_relative_to(venv), f"tecli imported from {package_file}, not from the wheel"
    assert migrations.is_relative_to(venv) and (migrations / "env.py").is_file()

    db = tmp_path / "w.db"
    tecli = venv / "bin" / "tecli"
    upgraded = run(tecli, "db", "upgrade", "--db", db, cwd=tmp_path, env=env)
    assert f"is at revision {SCHEMA_HEAD} (head)" in upgraded
    history = run(tecli, "db", "history", cwd=tmp_path, env=env).splitlines()
    assert len(history) == len(versions)
    assert history[0].startswith("<base> -> ")
    assert history[-1].split(":")[0].endswith(f"-> {SCHEMA_HEAD}")

    with sqlite3.connect(db) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revisions = [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
    assert TABLES <= tables, f"missing tables: {sorted(TABLES - tables)}"
    assert revisions == [SCHEMA_HEAD]
