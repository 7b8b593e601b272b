"""The `tecli` command line: thin Typer commands that parse, call and print.

Heavy libraries (torch, numba, pandas, SQLAlchemy) are imported inside the
commands that need them, so `tecli --help` starts fast.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from tecli import __version__
from tecli.errors import UserError
from tecli.spec import RunSpec, TEConfig

app = typer.Typer(
    help="Experiment runner for transfer-entropy (TE) accelerated training of CNNs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tecli {__version__}")
        raise typer.Exit()


@app.callback()
def main(
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


def _parse_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--te-layers must be comma-separated integers such as -1 or -2,-1, got {text!r}") from None


@app.command()
def run(
    dataset: str = typer.Option(..., "--dataset", help="Data set: digits, usps, mnist, fashionmnist, cifar10, svhn, stl10."),
    te: bool = typer.Option(False, "--te", help="Train with TE feedback (baseline without)."),
    seed: int = typer.Option(0, help="Seed of weights, sample order and TE pair subset."),
    epochs: int = typer.Option(10, help="Number of epochs."),
    lr: float = typer.Option(0.01, help="SGD learning rate."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    batch_size: int = typer.Option(64, help="Mini-batch size."),
    weight_decay: float = typer.Option(0.0, help="SGD weight decay."),
    te_threshold: float = typer.Option(TEConfig.threshold, help="Binarization threshold g of hidden (ReLU) outputs."),
    te_threshold_out: float = typer.Option(TEConfig.threshold_out, help="Threshold of the class layer's softmax outputs."),
    te_window: int = typer.Option(TEConfig.window, help="TE window in samples (rounded up to whole batches)."),
    te_refresh: int = typer.Option(TEConfig.refresh, help="Recompute TE every N batches."),
    te_fraction: float = typer.Option(TEConfig.fraction, help="Fraction of neuron pairs that get feedback."),
    te_delay: int = typer.Option(TEConfig.delay, help="Source delay d of TE (0: same sample)."),
    te_lambda: float = typer.Option(TEConfig.lam, help="Feedback strength lambda."),
    te_mode: str = typer.Option(TEConfig.mode, help="amplify (1 + lambda*TE) or dampen (1 - lambda*TE)."),
    te_layers: str = typer.Option("-1", help="Linear layers with feedback, comma-separated indices (-1: class layer)."),
    te_reach: str = typer.Option(TEConfig.reach, help="weights: scale weight gradients; backprop: also the error sent back."),
    te_subset_seed: Optional[int] = typer.Option(None, help="Seed of the pair subset (default: --seed)."),
    data_dir: Optional[Path] = typer.Option(None, help="Data folder (default: $TECLI_DATA_DIR, else the user cache)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch and numba (default: their own)."),
) -> None:
    """Train one model (baseline, or with --te the TE-feedback variant)."""
    with _user_errors():
        te_config = (
            TEConfig(
                threshold=te_threshold,
                threshold_out=te_threshold_out,
                window=te_window,
                refresh=te_refresh,
                fraction=te_fraction,
                delay=te_delay,
                lam=te_lambda,
                mode=te_mode,
                layers=_parse_layers(te_layers),
                reach=te_reach,
                subset_seed=te_subset_seed,
            )
            if te
            else None
        )
        spec = RunSpec(
            dataset=dataset,
            seed=seed,
            epochs=epochs,
            lr=lr,
            momentum=momentum,
            batch_size=batch_size,
            weight_decay=weight_decay,
            te=te_config,
        ).validate()
        from tecli.runner import run_one

        run_one(spec, data_dir=data_dir, device=device, threads=threads)
