"""The model registry: every model on every input shape, its head under real TE feedback,
the `model` parameter on the command line, in sweep files and in run keys."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from tecli.checkpoint import loads
from tecli.cli import app
from tecli.data import load_dataset
from tecli.db.schema import Checkpoint, Epoch, Run
from tecli.db.store import open_database
from tecli.models import CONV_BLOCKS, MODELS, build_model, linear_layers
from tecli.spec import RunSpec, TEConfig
from tecli.sweep.file import SweepFileError, parse_sweep
from tecli.train import train


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def small_digits():
    """64 training and 32 test samples of digits: resnet18 trains at seconds per batch on 2 cores."""
    digits = load_dataset("digits")
    return replace(digits, x_train=digits.x_train[:64], y_train=digits.y_train[:64], x_test=digits.x_test[:32], y_test=digits.y_test[:32])


@pytest.mark.parametrize("shape", list(CONV_BLOCKS), ids=lambda shape: "x".join(map(str, shape)))
@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_ends_in_the_head_the_feedback_reads(name, shape):
    """(batch, classes) out, and the last three Linear layers are the head as TEFeedback sees
    it: each one's input is the previous one's output after its ReLU, the first one's input
    is post-ReLU features, and the class layer's output is the model's output."""
    model = build_model(shape, 7, name).eval()
    head = linear_layers(model)[-3:]
    assert [layer.weight.shape[0] for layer in head] == [120, 84, 7]
    seen = []
    for layer in head:
        layer.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0], output)))
    with torch.no_grad():
        out = model(torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (2, 7)
    (in1, out1), (in2, out2), (in3, out3) = seen
    assert in1.min() >= 0 and in1.shape == (2, head[0].weight.shape[1])
    assert torch.equal(in2, torch.relu(out1)) and torch.equal(in3, torch.relu(out2)) and torch.equal(out3, out)


@pytest.mark.parametrize("name", list(MODELS))
def test_te_feedback_on_every_head_layer_of_every_model(small_digits, name):
    te = TEConfig(window=32, refresh=2, threshold_out=0.1, layers=(-3, -2, -1))
    training = train(RunSpec(dataset="digits", epochs=1, lr=0.05, batch_size=16, model=name, te=te), small_digits)
    before = [p.detach().clone() for p in training.model.parameters()]
    [result] = list(training)
    assert [slot.layer for slot in training.feedback._slots] == linear_layers(training.model)[-3:]
    assert all(slot.te.max() > 0 for slot in training.feedback._slots)
    assert 0 < result.te_mean <= result.te_max <= 1 and 0 < result.te_seconds < result.seconds
    assert all(not torch.equal(p, q) for p, q in zip(before, training.model.parameters()))
    assert training.state_dict()["model_args"] == {"input_shape": [1, 8, 8], "n_classes": 10, "model": name}


def test_a_resumed_cnn_wide_continues_bit_for_bit(small_digits):
    """Its checkpoint holds batch norm's running statistics with the weights."""
    spec = RunSpec(dataset="digits", epochs=2, lr=0.05, batch_size=16, model="cnn-wide", te=TEConfig(window=32, refresh=2))
    whole = [(r.train_loss, r.test_loss, r.test_acc, r.te_mean) for r in train(spec, small_digits)]
    first = train(spec, small_digits)
    next(iter(first))
    state = first.state_dict()
    assert build_model(**state["model_args"]).load_state_dict(state["model"])  # strict: every key fits
    resumed = train(spec, small_digits)
    resumed.load_state_dict(state)
    assert [(r.train_loss, r.test_loss, r.test_acc, r.te_mean) for r in resumed] == whole[1:]


def test_the_default_model_keeps_todays_run_keys_and_configuration():
    """Keys computed before models could be chosen; the committed study's are checked in test_sweep_grid."""
    baseline, te = RunSpec(dataset="usps"), RunSpec(dataset="digits", seed=3, te=TEConfig())
    assert (baseline.run_key(), te.run_key()) == ("e629cbf641e407db", "cce2fc2948a962ba")
    assert "model" not in baseline.to_dict() and RunSpec.from_dict(baseline.to_dict()).model == "cnn"
    wide = replace(baseline, model="cnn-wide")
    assert wide.to_dict()["model"] == "cnn-wide" and RunSpec.from_dict(wide.to_dict()) == wide
    assert len({baseline.run_key(), wide.run_key(), replace(baseline, model="resnet18").run_key()}) == 3


def test_run_records_the_model_and_export_rebuilds_it(tmp_path):
    db = tmp_path / "m.db"
    args = ["--dataset", "digits", "--epochs", 1, "--te", "--te-window", 128, "--te-refresh", 8, "--te-threshold-out", 0.1]
    result = invoke("run", *args, "--model", "cnn-wide", "--threads", 2, "--db", db)
    assert result.exit_code == 0, result.output
    with Session(open_database(str(db))) as session:
        assert session.scalar(select(Run.config))["model"] == "cnn-wide"
        assert session.scalar(select(Epoch.te_mean)) > 0
        model_args = loads(session.scalar(select(Checkpoint.state)))["model_args"]
    assert model_args == {"input_shape": [1, 8, 8], "n_classes": 10, "model": "cnn-wide"}
    out = tmp_path / "export"
    assert invoke("runs", "export", 1, "--output", out, "--db", db).exit_code == 0
    about = json.loads((out / "run.json").read_text())
    build_model(**about["model_args"]).load_state_dict(torch.load(out / "model.pt", weights_only=True))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "digits", "--model", "nope"], "error: --model: expected one of cnn, cnn-wide, resnet18, got 'nope'"),
        (["--dataset", "digits", "--model", "resnet18", "--batch-size", "2"], "leaves a last batch of one sample"),
        (["--resume", "1", "--model", "cnn-wide"], "error: --resume continues run 1 with its recorded configuration; leave out --model"),
    ],
)
def test_a_model_mistake_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    result = invoke("run", *args, "--db", tmp_path / "t.db")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert list(tmp_path.iterdir()) == []


SWEEP = """
name = "models"
seeds = [0]
[datasets.digits]
[variants.baseline]
te = false
model = {models}
"""


def test_a_sweep_file_lists_models():
    sweep = parse_sweep(SWEEP.format(models='["cnn", "cnn-wide"]'), Path("models.toml"))
    assert [(spec.variant, spec.model) for spec in sweep.runs] == [
        ("baseline(model=cnn)", "cnn"), ("baseline(model=cnn-wide)", "cnn-wide")
    ]  # fmt: skip
    with pytest.raises(SweepFileError, match=r"variants\.baseline\.model\[1\] \(line 7\): expected one of cnn, cnn-wide, resnet18"):
        parse_sweep(SWEEP.format(models='["cnn", "vgg"]'), Path("models.toml"))
