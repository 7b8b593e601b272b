"""Thresholds set from the batch (argmax, uniform, median) and the permuted-feedback control:
the blocks the feedback writes against numpy references, the permuted factors against the
plain ones, a recorded `tecli run` with all three, one-line mistakes, unchanged run keys."""

import numpy as np
import pytest
import torch
from sqlalchemy import select
from typer.testing import CliRunner

from tecli.cli import app
from tecli.data import load_dataset
from tecli.db.schema import Epoch, Run
from tecli.db.store import open_database
from tecli.errors import UserError
from tecli.models import build_model, linear_layers
from tecli.spec import RunSpec, TEConfig
from tecli.te.feedback import TEFeedback


# On a GPU the feedback binarizes and packs on the device (fill_block's packed route).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def lower_median(values: np.ndarray) -> np.ndarray:
    """Each column's lower median: the ((n - 1) // 2)-th smallest."""
    return np.sort(values, axis=0)[(len(values) - 1) // 2]


def capture_blocks(digits, config: TEConfig, samples: int, device: str):
    """One forward pass with capture on: the (sources, targets) block the feedback pushed for
    its layer, and that layer's input and output as an independent hook saw them.  Number
    thresholds on the CPU push activations and thresholds (push_values, which counts them as
    push() counts their float32 comparisons: test_te_window); other thresholds write a block."""
    torch.manual_seed(0)
    model = build_model(digits.input_shape, digits.n_classes).to(device)
    feedback = TEFeedback(model, config, batch_size=samples, seed=0)
    slot = feedback._slots[0]
    written, real_block, real_push_values = [], slot.window.block, slot.window.push_values

    def block(n):
        written.append(real_block(n))
        return written[-1]

    def push_values(sources, source_threshold, targets, target_threshold, te=None):
        written.append((np.greater(sources, np.float32(source_threshold)).T, np.greater(targets, np.float32(target_threshold)).T))
        real_push_values(sources, source_threshold, targets, target_threshold, te)

    slot.window.block, slot.window.push_values = block, push_values
    seen = {}
    linear_layers(model)[config.layers[0]].register_forward_hook(
        lambda m, i, o: seen.update(src=i[0].detach().cpu().numpy(), out=o.detach().cpu().numpy().astype(np.float64))
    )
    feedback.before_batch()
    model(digits.x_train[:samples].to(device))
    [(sources, targets)] = written
    return sources.T.astype(bool), targets.T.astype(bool), seen["src"], seen["out"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("samples", [50, 51])
def test_argmax_fires_the_predicted_class_alone(digits, samples, device):
    sources, targets, src, logits = capture_blocks(digits, TEConfig(refresh=1, threshold_out="argmax"), samples, device)
    assert np.array_equal(targets, np.eye(digits.n_classes, dtype=bool)[np.argmax(logits, axis=1)])
    assert np.array_equal(sources, src > 0.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("samples", [50, 51])
def test_uniform_fires_the_classes_above_one_over_classes(digits, samples, device):
    _, targets, _, logits = capture_blocks(digits, TEConfig(refresh=1, threshold_out="uniform"), samples, device)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected = exp / exp.sum(axis=1, keepdims=True) > 1 / digits.n_classes
    assert np.array_equal(targets, expected)
    assert expected.any(axis=1).all() and not expected.all()  # neither empty nor everything


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layer", [-1, -2])
def test_number_thresholds_fire_above_them(digits, layer, device):
    config = TEConfig(refresh=1, threshold=0.25, threshold_out=0.1, layers=(layer,))
    sources, targets, src, out = capture_blocks(digits, config, 50, device)
    assert np.array_equal(sources, src > np.float32(0.25)) and sources.any() and not sources.all()
    if layer == -1:  # the class layer: its softmax probability against 0.1
        exp = np.exp(out - out.max(axis=1, keepdims=True))
        expected = exp / exp.sum(axis=1, keepdims=True) > 0.1
    else:  # a hidden target: its ReLU output against 0.25
        expected = np.maximum(out, 0.0) > 0.25
    assert np.array_equal(targets, expected) and expected.any() and not expected.all()


@pytest.mark.parametrize("samples", [50, 51])  # the lower median of an even batch, the middle of an odd one
@pytest.mark.parametrize("layer", [-1, -2])
@pytest.mark.parametrize("device", DEVICES)
def test_median_fires_each_neuron_above_its_batch_median(digits, samples, layer, device):
    config = TEConfig(refresh=1, threshold="median", threshold_out=0.1, layers=(layer,))
    sources, targets, src, out = capture_blocks(digits, config, samples, device)
    assert np.array_equal(sources, src > lower_median(src))
    assert sources.any() and (sources.sum(axis=0) <= samples // 2).all()
    if layer == -2:  # a hidden target: its ReLU output against that output's median
        relu = np.maximum(out, 0.0)
        assert np.array_equal(targets, relu > lower_median(relu))
        assert targets.any()


def first_refresh(digits, permute: bool):
    """Two batches, then the first refresh; returns the feedback and its generator's state
    before the refresh (its only draw until then is the pair subset)."""
    torch.manual_seed(0)
    model = build_model(digits.input_shape, digits.n_classes)
    config = TEConfig(window=64, refresh=2, fraction=0.5, threshold_out="argmax", permute=permute)
    feedback = TEFeedback(model, config, batch_size=32, seed=1)
    state = feedback.rng.bit_generator.state
    for b in range(2):
        feedback.before_batch()
        x, y = digits.x_train[32 * b : 32 * b + 32], digits.y_train[32 * b : 32 * b + 32]
        torch.nn.functional.cross_entropy(model(x), y).backward()
        feedback.after_backward()
        model.zero_grad()
    return feedback, state


def test_permute_moves_the_same_factors_onto_shuffled_chosen_pairs(digits):
    plain, _ = first_refresh(digits, permute=False)
    permuted, state = first_refresh(digits, permute=True)
    (p_slot,), (q_slot,) = plain._slots, permuted._slots
    assert np.array_equal(p_slot.flat_index, q_slot.flat_index)  # the same pairs chosen
    assert np.array_equal(p_slot.te, q_slot.te) and (p_slot.te > 0).sum() > 10  # the same TE measured
    flat = p_slot.flat_index
    before, after = p_slot.factor.view(-1).numpy(), q_slot.factor.view(-1).numpy()
    assert np.array_equal(np.sort(after[flat]), np.sort(before[flat]))
    assert not np.array_equal(after[flat], before[flat])
    outside = np.setdiff1d(np.arange(before.size), flat)
    assert (before[outside] == 1).all() and (after[outside] == 1).all()
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    assert np.array_equal(after[flat[rng.permutation(len(flat))]], before[flat])  # drawn from the TE side's generator
    assert permuted.diagnostics() == plain.diagnostics()
    assert permuted.te_stats() == plain.te_stats()


def test_a_recorded_run_with_argmax_median_and_permute(tmp_path):
    db = tmp_path / "b.db"
    result = invoke(
        "run", "--dataset", "digits", "--epochs", 2, "--lr", 0.05, "--threads", 1, "--te", "--te-window", 128,
        "--te-refresh", 4, "--te-threshold-out", "argmax", "--te-threshold", "median", "--te-permute", "--db", db,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "changed nothing" not in result.output
    with open_database(db).connect() as connection:
        (run,) = connection.execute(select(Run)).all()
        epochs = connection.execute(select(Epoch).order_by(Epoch.epoch)).all()
    assert {k: run.config["te"][k] for k in ("threshold", "threshold_out", "permute")} == {
        "threshold": "median", "threshold_out": "argmax", "permute": True
    }
    assert RunSpec.from_dict(run.config).run_key() == run.run_key
    assert len(epochs) == 2
    for row in epochs:
        assert row.target_fire_rate == pytest.approx(0.1)  # one class of ten per sample
        assert 0 < row.source_fire_rate <= 0.5  # above the lower median: at most half a batch
        assert row.factor_dev_max > 0 and 0 < row.te_positive_share <= 1


def test_the_inert_warning_shows_a_named_threshold(tmp_path):
    """On digits no softmax output reaches 0.5 early on (test_cli_run): no target fires."""
    result = invoke(
        "run", "--dataset", "digits", "--epochs", 1, "--threads", 1, "--te", "--te-refresh", 4,
        "--te-threshold", "median", "--db", tmp_path / "i.db",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no target neuron fired (threshold_out 0.5, threshold median)" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--te", "--te-threshold-out", "foo"], "--te-threshold-out: expected a number, argmax or uniform, got 'foo'"),
        (["--te", "--te-threshold", "argmax"], "--te-threshold: expected a number or median, got 'argmax'"),
        (["--te", "--te-threshold", "nan"], "--te-threshold: expected a number or median, got nan"),
        (["--te-permute"], "--te-permute needs --te"),
    ],
)
def test_bad_thresholds_are_one_line_and_write_nothing(tmp_path, args, message):
    db = tmp_path / "none.db"
    result = invoke("run", "--dataset", "digits", *args, "--db", db)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not db.exists()


def test_values_are_judged_by_the_rules():
    valid = TEConfig(threshold=1, threshold_out="uniform", permute=True).validate()
    assert (valid.threshold, valid.threshold_out, valid.permute) == (1.0, "uniform", True)
    for config, message in [
        (TEConfig(threshold_out=True), "te.threshold_out: expected a number, argmax or uniform, got True"),
        (TEConfig(threshold="uniform"), "te.threshold: expected a number or median, got 'uniform'"),
        (TEConfig(permute=1), "te.permute: expected true or false, got 1"),
    ]:
        with pytest.raises(UserError, match=f"^{message}$"):
            config.validate()


# Recorded before threshold names and permute existed: those runs keep their keys.
DEFAULT_TE_KEY = "e945ca2750fc92b4"
OTHER_TE_KEY = "6711a9396a04d52e"
OTHER_TE = TEConfig(
    threshold=0.25, threshold_out=0.3, window=256, refresh=8, fraction=0.25, delay=1, lam=4.0, mode="dampen",
    layers=(-2, -1), reach="backprop", subset_seed=7,
)  # fmt: skip


def test_existing_configurations_keep_their_run_keys_and_records():
    default = RunSpec(dataset="digits", te=TEConfig()).validate()
    other = RunSpec(dataset="usps", seed=3, epochs=5, lr=0.05, te=OTHER_TE).validate()
    assert (default.run_key(), other.run_key()) == (DEFAULT_TE_KEY, OTHER_TE_KEY)
    assert "permute" not in default.to_dict()["te"]
    old_record = {**other.to_dict(), "te": {**other.to_dict()["te"], "layers": [-2, -1]}}  # as JSON stores it
    assert RunSpec.from_dict(old_record).run_key() == OTHER_TE_KEY
    permuted = RunSpec(dataset="digits", te=TEConfig(permute=True, threshold="median")).validate()
    assert permuted.run_key() != DEFAULT_TE_KEY
    assert RunSpec.from_dict(permuted.to_dict()).run_key() == permuted.run_key()
