"""The `tecli` command line: thin Typer commands that parse, call and print.

Heavy libraries (torch, numba, SQLAlchemy, matplotlib) are imported inside the
commands that need them, so `tecli --help` starts fast.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, Optional

import typer

from tecli import __version__
from tecli.errors import UserError, shown
from tecli.observe import DEFAULT_PROBE, PROBE_RULE, probe_size
from tecli.spec import MODEL_NAMES, RunSpec, TEConfig, check_value

app = typer.Typer(
    help="Experiment runner for transfer-entropy (TE) accelerated training of CNNs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _db_option():
    return typer.Option(None, "--db", help="Database file or SQLAlchemy URL (default: $TECLI_DB, else ./tecli.db).")


def _memory_format_option():
    return typer.Option(
        None,
        help="channels_last (default; the faster layout) or contiguous (the layout of runs recorded before it); "
        "recorded with each run.",
    )


def _format_option():
    return typer.Option("table", "--format", help="table or json.")


def _check_format(value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"--format must be one of {', '.join(allowed)}, got {value!r}")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tecli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Experiment runner for transfer-entropy (TE) accelerated training of CNNs."""


@contextmanager
def _user_errors():
    """A UserError ends the command with one line on stderr and exit code 2."""
    try:
        yield
    except UserError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None


def _option_name(field: str) -> str:
    """The `tecli run` option of a RunSpec field: te.lam -> --te-lambda, batch_size -> --batch-size."""
    return "--" + {"te.lam": "te-lambda"}.get(field, field.replace(".", "-").replace("_", "-"))


def _te_option(field: str, help_text: str):
    """A --te-* option: None unless given, so a TE parameter without --te can be caught."""
    default = getattr(TEConfig, field)
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    return typer.Option(None, help=f"{help_text} \\[default: {shown}]")  # escaped: Rich would read [..] as markup


def _parse_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--te-layers must be comma-separated integers such as -1 or -2,-1, got {text!r}") from None


def _parse_threshold(text: str | None) -> float | str | None:
    """--te-threshold(-out): a number, else the name as given (TEConfig's rules judge it)."""
    try:
        return None if text is None else float(text)
    except ValueError:
        return text


# What --resume keeps from the run's recorded configuration: these may not be given with it.
_SPEC_OPTIONS = (
    "dataset", "te", "seed", "epochs", "lr", "momentum", "batch_size", "weight_decay", "model", "stop_at", "te_threshold",
    "te_threshold_out", "te_window", "te_refresh", "te_fraction", "te_delay", "te_lambda", "te_mode",
    "te_layers", "te_reach", "te_subset_seed", "te_permute",
)  # fmt: skip


@app.command()
def run(
    ctx: typer.Context,
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Data set: digits, usps, mnist, fashionmnist, cifar10, svhn, stl10."),
    te: bool = typer.Option(False, "--te", help="Train with TE feedback (baseline without)."),
    seed: int = typer.Option(0, help="Seed of weights, sample order and TE pair subset."),
    epochs: int = typer.Option(10, help="Number of epochs."),
    lr: float = typer.Option(0.01, help="SGD learning rate."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    batch_size: int = typer.Option(64, help="Mini-batch size."),
    weight_decay: float = typer.Option(0.0, help="SGD weight decay."),
    model: str = typer.Option(MODEL_NAMES[0], help=f"Model: {', '.join(MODEL_NAMES)} (README, Models)."),
    stop_at: Optional[float] = typer.Option(
        None, metavar="ACC", help="End the run after the first epoch whose test accuracy reaches ACC (default: all epochs)."
    ),
    te_threshold: Optional[str] = _te_option(
        "threshold", "Binarization threshold g of hidden (ReLU) outputs, or median (each neuron's batch median)."
    ),
    te_threshold_out: Optional[str] = _te_option(
        "threshold_out", "Threshold of the class layer's softmax outputs, or argmax (the predicted class) or uniform (1/classes)."
    ),
    te_window: Optional[int] = _te_option("window", "TE window in samples (rounded up to whole batches)."),
    te_refresh: Optional[int] = _te_option("refresh", "Recompute TE every N batches."),
    te_fraction: Optional[float] = _te_option("fraction", "Fraction of neuron pairs that get feedback."),
    te_delay: Optional[int] = _te_option("delay", "Source delay d of TE (0: same sample)."),
    te_lambda: Optional[float] = _te_option("lam", "Feedback strength lambda."),
    te_mode: Optional[str] = _te_option("mode", "amplify (1 + lambda*TE) or dampen (1 - lambda*TE)."),
    te_layers: Optional[str] = _te_option("layers", "Linear layers with feedback, comma-separated (-1: class layer)."),
    te_reach: Optional[str] = _te_option("reach", "weights: scale weight gradients; backprop: also the error sent back."),
    te_subset_seed: Optional[int] = typer.Option(None, help="Seed of the pair subset (default: --seed)."),
    te_permute: bool = typer.Option(
        False, "--te-permute", help="Control: each refresh applies the TE values to a random permutation of the chosen pairs."
    ),
    data_dir: Optional[Path] = typer.Option(None, help="Data folder (default: $TECLI_DATA_DIR, else the user cache)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch and numba (default: their own)."),
    memory_format: Optional[str] = _memory_format_option(),
    observe: bool = typer.Option(
        False, "--observe", help="After every epoch, measure each layer's entropy, H(T), I(T;Y) and the TE between "
        "layers on a fixed probe of training samples (README, Observing information flow); changes no metric."
    ),
    probe: Optional[int] = typer.Option(None, metavar="N", help=f"Probe size of --observe, in training samples (default {DEFAULT_PROBE})."),
    resume: Optional[int] = typer.Option(
        None, "--resume", metavar="RUN_ID", help="Continue an interrupted run from its last checkpoint, with its recorded configuration "
        "(and, unless given, its device, threads, memory format and observation)."
    ),
    db: Optional[str] = _db_option(),
) -> None:
    """Train one model (baseline, or with --te the TE-feedback variant) and record every epoch."""
    with _user_errors():
        observed = _probe_size(observe, probe)
        if resume is not None:  # (typer vendors click: compare the source by name)
            fixed = [n for n in _SPEC_OPTIONS if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"]
            if fixed:
                raise UserError(
                    f"--resume continues run {resume} with its recorded configuration; leave out {_option_name(fixed[0])}"
                )
            given = lambda name: getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"  # noqa: E731
            _run(None, db, data_dir, device if given("device") else None, threads, memory_format, resume, observed)
            return
        if dataset is None:
            raise UserError("--dataset is required (or --resume RUN_ID to continue a run)")
        given = {
            "threshold": _parse_threshold(te_threshold), "threshold_out": _parse_threshold(te_threshold_out),
            "window": te_window, "refresh": te_refresh, "fraction": te_fraction, "delay": te_delay, "lam": te_lambda,
            "mode": te_mode, "layers": _parse_layers(te_layers) if te_layers is not None else None,
            "reach": te_reach, "subset_seed": te_subset_seed, "permute": te_permute or None,
        }  # fmt: skip
        given = {name: value for name, value in given.items() if value is not None}
        if given and not te:
            raise UserError(f"{_option_name('te.' + next(iter(given)))} needs --te (a baseline run has no TE feedback)")
        te_config = TEConfig(**given) if te else None
        spec = RunSpec(
            dataset=dataset,
            seed=seed,
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            batch_size=batch_size,
            weight_decay=weight_decay,
            model=model,
            stop_at=stop_at,
            te=te_config,
        ).validate(_option_name)
        _run(spec, db, data_dir, device, threads, memory_format, None, observed)


def _probe_size(observe: bool, probe: int | None) -> int | None:
    """The probe size --observe and --probe ask for; None: not observed."""
    if probe is not None and not observe:
        raise UserError("--probe needs --observe")
    return check_value("--probe", PROBE_RULE, probe) if probe is not None else probe_size(observe)


def _run(spec: RunSpec | None, db, data_dir, device, threads, memory_format, resume: int | None, observe: int | None) -> None:
    from tecli.db.recording import RunTakenOver
    from tecli.runner import RunFailed, RunInterrupted, run_one

    try:
        run_one(
            spec, db=db, data_dir=data_dir, device=device, threads=threads, resume=resume, memory_format=memory_format,
            observe=observe,
        )  # fmt: skip
    except RunInterrupted as stop:
        typer.echo(f"{stop}; `tecli run --resume {stop.run_id}` continues it", err=True)
        raise typer.Exit(130) from None
    except RunFailed as failure:
        typer.echo(f"error: {failure} (see `tecli runs show {failure.run_id}`)", err=True)
        raise typer.Exit(1) from None
    except RunTakenOver as taken:
        typer.echo(f"error: {taken}", err=True)
        raise typer.Exit(1) from None


@contextmanager
def _sweep_file_errors():
    """Every problem of an invalid sweep file, one line each, exit code 2."""
    from tecli.sweep.file import SweepFileError

    try:
        yield
    except SweepFileError as error:
        for line in str(error).splitlines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None


@app.command()
def sweep(
    file: Path = typer.Argument(..., help="Sweep file, e.g. experiments.toml."),
    workers: Optional[int] = typer.Option(
        None, help="Runs trained at once: local, worker processes (default 1); ray, a cap (default: what the cluster fits)."
    ),
    executor: str = typer.Option("local", help="local (processes on this machine) or ray (a Ray cluster; pip install 'tecli[ray]')."),
    address: Optional[str] = typer.Option(None, help="Ray cluster to join, e.g. 10.0.0.1:6379 or auto (default: $RAY_ADDRESS, else a cluster of this machine)."),
    gpus_per_run: Optional[float] = typer.Option(None, help="GPUs each run needs with --executor ray --device cuda; fractions share a GPU (default 1)."),
    keep_warm: Optional[float] = typer.Option(
        None, help="Ray: keep the sweep's worker processes this many seconds for the next sweep, which then starts at once "
        "(they hold their CPUs meanwhile; default 0).",
    ),
    stall_timeout: Optional[float] = typer.Option(
        None, help="Local executor: a run without progress for this many seconds is failed and its worker replaced (default 900)."
    ),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also rerun runs whose last attempt failed."),
    restart: bool = typer.Option(
        False, "--restart", help="Start interrupted runs over from epoch 1 instead of resuming them from their checkpoints."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the grid, the plan (done / to run) and the time left; train nothing, write nothing."
    ),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", metavar="KEY.PATH=VALUE",
        help="Override a file value with a TOML value, e.g. defaults.te.lam=[1,4] or datasets.usps.epochs=5 (repeatable).",
    ),
    threads: Optional[int] = typer.Option(None, help="CPU threads per run (default: local, cores / workers; ray, 1)."),
    memory_format: Optional[str] = _memory_format_option(),
    data_dir: Optional[Path] = typer.Option(None, help="Data folder (default: $TECLI_DATA_DIR, else the user cache)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    db: Optional[str] = _db_option(),
) -> None:
    """Run a grid of data sets x seeds x variants; completed runs are skipped, so rerunning resumes."""
    with _user_errors(), _sweep_file_errors():
        from rich.console import Console

        from tecli.sweep.display import SweepProgress, plan_counts, plan_table
        from tecli.sweep.run import SweepAborted, make_executor, plan_sweep, run_sweep

        runner = make_executor(
            executor, workers=workers, address=address, gpus_per_run=gpus_per_run, device=device, stall_timeout=stall_timeout,
            keep_warm=keep_warm,
        )
        console = Console()
        if dry_run:
            from tecli.sweep.dry_run import dry_run as preview

            shown_plan = preview(file, db, overrides=overrides or (), retry_failed=retry_failed, restart=restart)
            console.print(plan_table(shown_plan.planned))
            console.print(f"sweep {shown_plan.spec.name}: {plan_counts(shown_plan.planned)}")
            console.print(shown_plan.grid_text(), shown_plan.time_left_text(), sep="\n", markup=False, soft_wrap=True)
            return
        planned = plan_sweep(
            file,
            db,
            retry_failed=retry_failed,
            restart=restart,
            device=device,
            threads=threads,
            trains_here=executor == "local",
            executor=runner,
            memory_format=memory_format or "channels_last",
            overrides=overrides or (),
        )
        name, counts_line = planned.spec.name, plan_counts(planned.planned)
        console.print(f"sweep {name}: {counts_line}; {runner.describe()}")
        display = SweepProgress(console, planned.to_run)
        with display:
            try:
                result = run_sweep(planned, executor=runner, data_dir=data_dir, on_event=display.report)
            except SweepAborted as error:  # the workers were stopped
                typer.echo(f"error: {error}", err=True)
                raise typer.Exit(1) from None
        line, counts = display.summary(skipped=len(planned.planned) - len(planned.to_run))
        console.print(line)
    if result.interrupted:
        typer.echo("sweep interrupted; run the same command again to resume", err=True)
        raise typer.Exit(130)
    if counts["failed"] or counts["interrupted"]:
        raise typer.Exit(1)


@app.command()
def report(
    output_format: str = typer.Option("table", "--format", help="table, markdown, csv, json or html."),
    output: Optional[Path] = typer.Option(None, help="Write the report here; learning-curve PNGs go next to it."),
    sweep: Optional[str] = typer.Option(None, help="Only runs of this sweep."),
    dataset: Optional[str] = typer.Option(None, help="Only this data set."),
    variant: Optional[str] = typer.Option(None, help="Only this variant (compared with the baseline)."),
    target: Optional[float] = typer.Option(None, help="Target accuracy for every data set (default: the sweep's)."),
    metric: str = typer.Option("test_acc", help="What --target applies to: test_acc or train_acc."),
    baseline: str = typer.Option("baseline", help="The variant the others are compared with."),
    mixed_conditions: bool = typer.Option(
        False,
        "--mixed-conditions",
        help="Compare seconds even between runs measured under different conditions (device, threads, "
        "CPU model, code version); the statements still name the differences.",
    ),
    clock: str = typer.Option("wall", help="What seconds are: wall time, or the process's CPU time (cpu)."),
    grid: bool = typer.Option(
        False, "--grid", help="Show the grid view (variants ranked by median speedup) for every data set, not only "
        "for those with more than 3 variants.",
    ),  # fmt: skip
    db: Optional[str] = _db_option(),
) -> None:
    """Epochs-to-target and seconds-to-target per data set and variant, over seeds."""
    with _user_errors():
        from tecli.report import render

        if output_format not in render.FORMATS:
            raise UserError(f"--format must be one of {', '.join(render.FORMATS)}, got {output_format!r}")
        if output is not None:
            if output_format == "table":
                raise UserError("--output needs a file format: --format markdown, csv, json or html")
            if output.is_dir():
                raise UserError(f"--output {output} is a folder; pass a file path such as {output / 'report.md'}")
            if not output.parent.is_dir():
                raise UserError(f"--output folder {output.parent} does not exist; create it or pass another path")
        from tecli.db.store import open_database
        from tecli.report.build import build_report

        result = build_report(
            open_database(db, create=False), sweep, dataset, variant, target, metric, baseline, mixed_conditions, clock, grid
        )
        images = []
        if output is not None:
            from tecli.report.plots import plot_curves, plot_lambda

            images = plot_curves(result, output.parent, output.stem) + plot_lambda(result, output.parent, output.stem)
        if output_format == "table":
            render.print_tables(result)
            text = None
        else:
            text = {
                "markdown": lambda: render.markdown(result, images),
                "csv": lambda: render.to_csv(result),
                "json": lambda: render.to_json(result),
                "html": lambda: render.to_html(result, images),
            }[output_format]()
        if output is None:
            if text is not None:
                typer.echo(text, nl=False)
        else:
            if text is not None:
                output.write_text(text)
            typer.echo(f"wrote {output}" + (f" and {len(images)} plot(s)" if images else ""), err=True)


@app.command()
def inspect(
    run_ids: list[int] = typer.Argument(..., metavar="RUN_ID", help="Runs trained with --observe, shown side by side."),
    output: Path = typer.Option(..., help="FILE.md (tables), FILE.png (one figure) or FILE.html (both)."),
    db: Optional[str] = _db_option(),
) -> None:
    """Information flow of observed runs: information plane, TE between layers, layer-entropy ranking."""
    with _user_errors():
        from tecli.report.inspect import check_output, inspect_runs, write_inspection
        from tecli.db.store import open_database

        check_output(output)
        write_inspection(inspect_runs(open_database(db, create=False), run_ids), output)
        typer.echo(f"wrote {output}", err=True)


runs_app = typer.Typer(help="Recorded runs: a table of them, or `runs show ID` for one.", no_args_is_help=False)
app.add_typer(runs_app, name="runs")


@runs_app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    dataset: Optional[str] = typer.Option(None, help="Only this data set."),
    variant: Optional[str] = typer.Option(None, help="Only this variant."),
    status: Optional[str] = typer.Option(None, help="Only this status: running, completed, failed, interrupted."),
    sweep: Optional[str] = typer.Option(None, help="Only runs of this sweep."),
    output_format: str = _format_option(),
    db: Optional[str] = _db_option(),
) -> None:
    """List recorded runs."""
    if ctx.invoked_subcommand:
        return
    with _user_errors():
        _check_format(output_format, ("table", "json"))
        from tecli.db.schema import RunStatus
        from tecli.db.store import open_database
        from tecli.runs_view import list_runs, runs_table

        statuses = [s.value for s in RunStatus]
        if status is not None and status not in statuses:
            raise UserError(f"--status must be one of {', '.join(statuses)}, got {shown(status)!r}")
        found = list_runs(open_database(db, create=False), dataset=dataset, variant=variant, status=status, sweep=sweep)
        _emit(found, output_format, lambda console: console.print(runs_table(found)))


@runs_app.command("show")
def runs_show(
    run_id: int = typer.Argument(..., help="Run id, as listed by `tecli runs`."),
    output_format: str = _format_option(),
    db: Optional[str] = _db_option(),
) -> None:
    """One run: its configuration and every recorded epoch."""
    with _user_errors():
        _check_format(output_format, ("table", "json"))
        from tecli.db.store import open_database
        from tecli.runs_view import run_tables, show_run

        run = show_run(open_database(db, create=False), run_id)
        _emit(run, output_format, lambda console: console.print(*run_tables(run)))


@runs_app.command("export")
def runs_export(
    run_id: int = typer.Argument(..., help="Run id, as listed by `tecli runs`."),
    output: Path = typer.Option(..., help="Folder for model.pt (torch state dict) and run.json (configuration)."),
    db: Optional[str] = _db_option(),
) -> None:
    """Write a run's model (the final one of a completed run) and its configuration."""
    with _user_errors():
        from tecli.checkpoint import export_model
        from tecli.db.store import open_database

        weights, about = export_model(open_database(db, create=False), run_id, output)
        typer.echo(f"wrote {weights} and {about}")


def _emit(data, output_format: str, print_table) -> None:
    if output_format == "json":
        typer.echo(json.dumps(data, indent=2))
    else:
        from rich.console import Console

        print_table(Console())


db_app = typer.Typer(help="The results database's schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(db: Optional[str] = _db_option()) -> None:
    """Create the database or upgrade its schema to the newest revision."""
    with _user_errors():
        from tecli.db import migrate
        from tecli.db.store import describe, open_database

        engine = open_database(db)
        typer.echo(f"{describe(engine.url)} is at revision {migrate.current(engine)} (head)")


@db_app.command("current")
def db_current(db: Optional[str] = _db_option()) -> None:
    """Print the database's schema revision (without upgrading it)."""
    with _user_errors():
        from tecli.db import migrate
        from tecli.db.store import create_db_engine, database_errors, database_url

        engine = create_db_engine(database_url(db, must_exist=True))
        with database_errors(engine):
            revision = migrate.current(engine)
        head = migrate.head()
        state = "head" if revision == head else f"behind head {head}; `tecli db upgrade` upgrades it"
        typer.echo(f"{revision or 'empty'} ({state})")


@db_app.command("history")
def db_history() -> None:
    """List the schema revisions, oldest first."""
    from tecli.db import migrate

    for revision, down, message in migrate.history():
        typer.echo(f"{down or '<base>'} -> {revision}: {message}")


def run_cli() -> None:
    """Console entry point: like app(), but click's usage errors are one line as well."""
    usage_error = typer.BadParameter.__base__  # click's UsageError, which typer vendors without exporting it
    try:
        code = app(prog_name="tecli", standalone_mode=False)
    except usage_error as error:
        message = " ".join(error.format_message().splitlines())
        if message:  # empty after `tecli` alone, which has printed the help
            import re

            from tecli.errors import SHOWN_LIMIT

            # click echoes the bad value quoted ('...'), in parentheses (extra arguments) or bare (--option)
            def cut(match: re.Match) -> str:
                quoted, parenthesized, bare = match.groups()
                if quoted is not None:
                    return f"'{shown(quoted)}'"
                return f"({shown(parenthesized)})" if parenthesized is not None else shown(bare)

            long_value = r"'([^']{%d,})'|\(([^()]{%d,})\)|(\S{%d,})" % ((SHOWN_LIMIT + 1,) * 3)
            message = re.sub(long_value, cut, message)
            where = error.ctx.command_path if error.ctx else "tecli"
            typer.echo(f"error: {message} (see `{where} --help`)", err=True)
        _exit(error.exit_code)
    except typer.Abort:
        _exit(130)
    except SystemExit as stop:  # typer.Exit from a command, or sys.exit
        _exit(stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1)
    _exit(code or 0)


def _exit(code: int) -> NoReturn:
    """End the process without the interpreter's teardown, which with torch, numba and
    LLVM loaded takes 1-2 s and does nothing a command needs (benchmarks/startup.py).
    What must happen at exit still does: the database connections are closed, the
    atexit handlers run (Ray's shutdown, multiprocessing's children) and the output is
    flushed. An unexpected exception does not come here: it exits as Python does."""
    import atexit
    import os
    import sys

    store = sys.modules.get("tecli.db.store")
    if store is not None:
        store.close_all()
    atexit._run_exitfuncs()  # (CPython's own: what a normal exit runs before its teardown)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
