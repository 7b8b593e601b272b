"""Write tests/data/schema-<head>.{db,postgresql.sql}: real tecli databases at the current
schema, for the upgrade tests of the next migration. Run it before changing the models:

    TECLI_DATA_DIR=... python tests/data/make_schema_fixture.py

Each database gets a sweep (digits, 2 seeds x baseline/te, 2 epochs) and a run stopped
by SIGTERM after 3 epochs (interrupted, with its checkpoint). The completed runs'
checkpoints are deleted to keep the files small.
"""

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from postgres_server import PASSWORD, PostgresServer  # noqa: E402

from tecli.db.store import SCHEMA_HEAD  # noqa: E402

SWEEP = """
name = "fixture"
seeds = [0, 1]
[defaults]
epochs = 2
lr = 0.05
[defaults.te]
window = 128
[datasets.digits]
target = 0.8
[variants.baseline]
te = false
[variants.te]
te = true
"""


def fill(db: str, sweep_file: Path) -> None:
    tecli = [sys.executable, "-m", "tecli"]
    subprocess.run([*tecli, "sweep", str(sweep_file), "--db", db], check=True)
    run = subprocess.Popen(
        [*tecli, "run", "--dataset", "digits", "--epochs", "200", "--seed", "5", "--db", db],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for line in run.stdout:
        if line.startswith("epoch   3/200"):
            break
    run.send_signal(signal.SIGTERM)
    run.communicate()
    assert run.returncode == 130, run.returncode
    engine = create_engine(db if "://" in db else f"sqlite:///{db}")
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM checkpoints WHERE run_id IN (SELECT id FROM runs WHERE status = 'completed')"))
    if "://" not in db:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            connection.exec_driver_sql("VACUUM")
    engine.dispose()


def main() -> None:
    sqlite = HERE / f"schema-{SCHEMA_HEAD}.db"
    dump_file = HERE / f"schema-{SCHEMA_HEAD}.postgresql.sql"
    with tempfile.TemporaryDirectory() as folder:
        sweep_file = Path(folder) / "fixture.toml"
        sweep_file.write_text(SWEEP)
        sqlite.unlink(missing_ok=True)
        fill(str(sqlite), sweep_file)
        with PostgresServer() as server:
            fill(server.create_database("fixture"), sweep_file)
            dump = subprocess.run(
                server._command("pg_dump", "--no-owner", "--no-privileges", "--inserts", "-h", str(server.socketdir),
                                "-p", str(server.port), "-U", "postgres", "fixture"),
                capture_output=True, text=True, check=True, env={**os.environ, "PGPASSWORD": PASSWORD},
            )  # fmt: skip
    lines = [line for line in dump.stdout.splitlines() if not line.startswith("\\")]
    header = (
        f"-- A tecli database at schema {SCHEMA_HEAD} (PostgreSQL), rows like schema-{SCHEMA_HEAD}.db's; "
        "written by tests/data/make_schema_fixture.py (pg_dump --no-owner --no-privileges --inserts, psql meta-commands removed).\n"
    )
    dump_file.write_text(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
