"""What `tecli sweep` shows: the plan, live progress of the runs, and the closing summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tecli.sweep.executors import Event
from tecli.sweep.plan import PlannedRun


def plan_table(planned: Sequence[PlannedRun]) -> Table:
    table = Table(title="plan", box=box.SIMPLE_HEAD)
    for column in ("dataset", "variant", "seed", "epochs", "state", "run key"):
        table.add_column(column, no_wrap=True)
    for p in planned:
        table.add_row(p.spec.dataset, p.spec.variant, str(p.spec.seed), str(p.spec.epochs), p.state, p.key)
    return table


def plan_counts(planned: Sequence[PlannedRun]) -> str:
    counts = Counter(p.state for p in planned)
    parts = [f"{counts[s]} {s}" for s in ("done", "resume", "to run", "failed", "running") if counts[s]]
    note = " (--retry-failed reruns failed runs)" if counts["failed"] else ""
    return f"{len(planned)} runs: {', '.join(parts)}{note}"


class SweepProgress:
    """Overall bar (runs finished / to run, ETA) and one line per run in progress."""

    def __init__(self, console: Console, to_run: Sequence[PlannedRun]):
        self.to_run = to_run
        self.outcomes: dict[int, Event] = {}
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.overall = self.progress.add_task("runs", total=len(to_run))
        self.lines: dict[int, int] = {}

    def __enter__(self) -> "SweepProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def report(self, event: Event) -> None:
        planned = self.to_run[event.index]
        if event.kind == "started":
            resumed = f" (resumed after epoch {event.epoch})" if event.epoch else ""
            description = f"  run {event.run_id} {planned.label}{resumed}"
            if event.index in self.lines:  # started again: a cluster retried it after its worker died
                self.progress.update(self.lines[event.index], description=description, completed=event.epoch or 0)
            else:
                self.lines[event.index] = self.progress.add_task(
                    description, total=planned.spec.epochs, completed=event.epoch or 0
                )
        elif event.kind == "epoch" and event.index in self.lines:
            self.progress.update(self.lines[event.index], completed=event.epoch)
        elif event.kind == "finished":
            self.outcomes[event.index] = event
            if event.index in self.lines:
                self.progress.remove_task(self.lines.pop(event.index))
            self.progress.advance(self.overall)
            run = f"run {event.run_id} " if event.run_id else ""
            detail = f": {event.message}" if event.status != "completed" and event.message else ""
            self.progress.console.print(f"{run}{planned.label} {event.status}{detail}", soft_wrap=True)

    def summary(self, skipped: int) -> tuple[str, Counter]:
        counts = Counter(event.status for event in self.outcomes.values())
        not_started = len(self.to_run) - len(self.outcomes)
        line = (
            f"sweep: {counts['completed']} completed, {counts['failed']} failed, "
            f"{counts['interrupted']} interrupted, {not_started} not started, {skipped} skipped"
            + (f", {counts['skipped']} claimed elsewhere" if counts["skipped"] else "")
        )
        return line, counts
