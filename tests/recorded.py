"""Runs recorded through the real recording API, for tests that need a filled database."""

from __future__ import annotations

from collections.abc import Iterable

from tecli.conditions import Conditions
from tecli.db.recording import claim_run, finish_run, record_epoch
from tecli.db.schema import RunStatus
from tecli.epoch import EpochResult
from tecli.spec import RunSpec

TEST_CONDITIONS = Conditions(
    device="cpu", gpu_name=None, threads=1, memory_format="channels_last", cpu_model="test cpu", code_version="src:test", code_commit="0" * 40,
    code_dirty=False,
)


def epoch_result(epoch: int, test_acc: float = 0.75, seconds: float = 1.0, te_seconds: float = 0.02) -> EpochResult:
    return EpochResult(epoch, 0.5, 0.8, 0.6, test_acc, seconds=seconds, te_seconds=te_seconds, te_mean=0.01, te_max=0.3)


def record_run(
    engine,
    spec: RunSpec,
    epochs: Iterable[EpochResult] = (),
    status: RunStatus | None = RunStatus.COMPLETED,
    conditions: Conditions = TEST_CONDITIONS,
    sweep_id: int | None = None,
    data_copy: str = "test copy",
) -> int:
    """Claim, record the epochs, finish with `status` (None: leave it running); returns the run id."""
    attempt = claim_run(engine, spec, conditions, sweep_id=sweep_id, data_copy=data_copy, rerun_completed=True)
    for result in epochs:
        record_epoch(engine, attempt, result)
    if status is not None:
        finish_run(engine, attempt, status)
    return attempt.run_id
