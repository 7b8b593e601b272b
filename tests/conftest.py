"""Every test gets its own default database, so no test writes ./tecli.db."""

import pytest


@pytest.fixture(autouse=True)
def _private_default_db(tmp_path, monkeypatch):
    monkeypatch.setenv("TECLI_DB", str(tmp_path / "default-tecli.db"))
