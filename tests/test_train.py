"""Real training on scikit-learn's digits: accuracy, determinism, and the TE feedback's exact effect."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from tecli.data import load_dataset
from tecli.models import build_model, linear_layers
from tecli.spec import RunSpec, TEConfig
from tecli.te import transfer_entropy_pairs
from tecli.te.feedback import TEFeedback, _ScaledLinear, fill_block
from tecli.train import train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def metrics(results):
    return [(r.train_loss, r.train_acc, r.test_loss, r.test_acc, r.te_mean, r.te_max) for r in results]


BASE = RunSpec(dataset="digits", seed=3, epochs=3, lr=0.05, batch_size=32)
TE = TEConfig(window=128, refresh=4, fraction=0.5, lam=2.0)


def test_digits_run_learns(digits):
    results = list(train(BASE, digits))
    assert [r.epoch for r in results] == [1, 2, 3]
    assert results[-1].test_acc > 0.85  # chance is 0.1
    assert results[-1].train_loss < results[0].train_loss
    assert all(r.seconds > 0 and r.te_seconds == 0 and r.te_mean is None for r in results)


def test_same_seed_gives_identical_metrics(digits):
    spec = replace(BASE, te=TE)
    assert metrics(train(spec, digits)) == metrics(train(spec, digits))


@pytest.mark.parametrize("memory_format", ["channels_last", "contiguous"])
def test_each_memory_format_is_reproducible_and_trains_the_same_model(digits, memory_format):
    """The layout changes which kernels run, not the model: each is identical run to run,
    and the two agree to rounding."""
    training = train(BASE, digits, memory_format=memory_format)
    conv = training.model.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last if memory_format == "channels_last" else torch.contiguous_format)
    results = metrics(training)
    assert results == metrics(train(BASE, digits, memory_format=memory_format))
    other = metrics(train(BASE, digits, memory_format="contiguous" if memory_format == "channels_last" else "channels_last"))
    assert np.allclose([m[:4] for m in results], [m[:4] for m in other], rtol=1e-3, atol=1e-3)


def test_other_seed_differs(digits):
    assert metrics(train(BASE, digits)) != metrics(train(replace(BASE, seed=4), digits))


def test_lambda_zero_reproduces_the_baseline_exactly(digits):
    baseline = metrics(train(BASE, digits))
    te_zero = train(replace(BASE, te=replace(TE, lam=0.0)), digits)
    assert [m[:4] for m in metrics(te_zero)] == [m[:4] for m in baseline]


@pytest.mark.parametrize("mode", ["amplify", "dampen"])
def test_te_feedback_changes_training_and_reports_te(digits, mode):
    baseline = metrics(train(BASE, digits))
    results = list(train(replace(BASE, te=replace(TE, mode=mode)), digits))
    assert [m[:4] for m in metrics(results)] != [m[:4] for m in baseline]
    assert all(0 < r.te_mean <= r.te_max <= 1 for r in results)
    assert all(0 < r.te_seconds < r.seconds for r in results)


def _one_batch(model, config, x, y, seed=0):
    """One forward/backward with feedback; returns the class layer's captured io and grads before/after."""
    captured = {}
    last = linear_layers(model)[-1]
    handle = last.register_forward_hook(lambda m, i, o: captured.update(src=i[0].detach(), out=o.detach()))
    feedback = TEFeedback(model, config, batch_size=len(x), seed=seed)
    feedback.before_batch()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads_before = {name: p.grad.clone() for name, p in model.named_parameters()}
    feedback.after_backward()
    handle.remove()
    feedback.close()
    return captured, feedback, grads_before


@pytest.mark.parametrize("mode, sign", [("amplify", 1.0), ("dampen", -1.0)])
def test_gradient_scaling_touches_exactly_the_chosen_pairs(digits, mode, sign):
    torch.manual_seed(0)
    model = build_model(digits.input_shape, digits.n_classes)
    x, y = digits.x_train[:200], digits.y_train[:200]
    config = TEConfig(window=200, refresh=1, fraction=0.3, lam=1.5, mode=mode, delay=0, threshold_out=0.1)
    captured, feedback, before = _one_batch(model, config, x, y)

    # expected TE from the engine on the activations captured by an independent hook
    sources = (captured["src"] > config.threshold).numpy().T
    targets = (torch.softmax(captured["out"], 1) > config.threshold_out).numpy().T
    n_out, n_in = linear_layers(model)[-1].weight.shape
    te_matrix = transfer_entropy_pairs(sources, targets, delay=0)  # (n_out, n_in)
    chosen = np.zeros((n_out, n_in), bool)
    pairs = feedback._slots[0].window.pairs
    chosen[pairs[:, 1], pairs[:, 0]] = True
    assert chosen.sum() == round(0.3 * n_in * n_out)

    expected_factor = np.where(chosen, 1.0 + sign * config.lam * te_matrix, 1.0)
    assert te_matrix[chosen].max() > 0  # the check below is not vacuous
    after = {name: p.grad for name, p in model.named_parameters()}
    weight_name = [n for n, p in model.named_parameters() if p is linear_layers(model)[-1].weight][0]
    np.testing.assert_allclose(
        after[weight_name].numpy(), before[weight_name].numpy() * expected_factor, rtol=1e-6, atol=0
    )
    for name in before:
        if name != weight_name:
            assert torch.equal(after[name], before[name]), name


def test_hidden_layer_feedback_uses_relu_threshold(digits):
    torch.manual_seed(0)
    model = build_model(digits.input_shape, digits.n_classes)
    config = TEConfig(window=200, refresh=1, fraction=1.0, lam=1.0, layers=(-2,), threshold=0.1)
    _, feedback, before = _one_batch(model, config, digits.x_train[:200], digits.y_train[:200])
    layer = linear_layers(model)[-2]
    assert feedback._slots[0].window.pairs.shape[0] == layer.weight.numel()
    assert feedback._slots[0].te.max() > 0
    weight_name = [n for n, p in model.named_parameters() if p is layer.weight][0]
    changed = ~torch.isclose(layer.weight.grad, before[weight_name], rtol=0, atol=0)
    assert changed.any()


def test_scaled_linear_backward_scales_each_connection():
    torch.manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.double, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    b = torch.randn(3, dtype=torch.double, requires_grad=True)
    f = 1 + torch.rand(3, 4, dtype=torch.double)
    g = torch.randn(5, 3, dtype=torch.double)
    _ScaledLinear.apply(x, w, b, f).backward(g)
    torch.testing.assert_close(x.grad, g @ (w * f).detach())
    torch.testing.assert_close(w.grad, (g.t() @ x.detach()) * f)
    torch.testing.assert_close(b.grad, g.sum(0))


def test_backprop_reach_differs_from_weights_reach(digits):
    weights = metrics(train(replace(BASE, epochs=1, te=TE), digits))
    backprop = metrics(train(replace(BASE, epochs=1, te=replace(TE, reach="backprop")), digits))
    assert weights != backprop


def test_capture_schedule_and_refresh_use_exactly_the_window_before_each_refresh(digits):
    """batch 8, window 16 samples (2 blocks), refresh every 5 batches: batches 3-4 and 8-9 are captured."""
    torch.manual_seed(0)
    model = build_model(digits.input_shape, digits.n_classes)
    config = TEConfig(window=16, refresh=5, fraction=0.5, threshold_out=0.1, delay=0)
    feedback = TEFeedback(model, config, batch_size=8, seed=1)
    slot = feedback._slots[0]
    seen, pushed = [], []
    last = linear_layers(model)[-1]
    last.register_forward_hook(lambda m, i, o: seen.append((i[0].detach() > 0, torch.softmax(o.detach(), 1) > 0.1)))
    batch = [None]
    for name in ("push_block", "push_values"):  # the routes of other thresholds and of numbers
        real = getattr(slot.window, name)
        setattr(slot.window, name, lambda *args, _real=real: (pushed.append(batch[0]), _real(*args)))
    refreshed = {}
    for b in range(10):
        batch[0] = b
        feedback.before_batch()
        x, y = digits.x_train[8 * b : 8 * b + 8], digits.y_train[8 * b : 8 * b + 8]
        torch.nn.functional.cross_entropy(model(x), y).backward()
        feedback.after_backward()
        model.zero_grad()
        if (b + 1) % 5 == 0:
            refreshed[b] = slot.te.copy()
    assert pushed == [3, 4, 8, 9]
    pairs = slot.window.pairs
    for b, captured in ((4, (3, 4)), (9, (8, 9))):
        sources = torch.cat([seen[i][0] for i in captured]).numpy().T
        targets = torch.cat([seen[i][1] for i in captured]).numpy().T
        np.testing.assert_allclose(refreshed[b], transfer_entropy_pairs(sources, targets, pairs, delay=0), atol=1e-12)
    assert refreshed[9].max() > 0


@pytest.mark.parametrize("reach", ["weights", "backprop"])
def test_close_removes_the_forward_override(digits, reach):
    """The feedback wraps the chosen layers' forward (no hook), and close() puts the class's back."""
    model = build_model(digits.input_shape, digits.n_classes)
    feedback = TEFeedback(model, TEConfig(reach=reach, layers=(-2, -1)), batch_size=32, seed=0)
    layers = linear_layers(model)
    assert ["forward" in layer.__dict__ for layer in layers] == [False, True, True]
    assert not any(layer._forward_hooks for layer in layers)
    feedback.close()
    assert not any("forward" in layer.__dict__ for layer in layers)


@pytest.mark.parametrize("reach", ["weights", "backprop"])
def test_a_deep_copy_of_a_model_under_feedback_computes_with_its_own_weights(digits, reach):
    """The wrapped forward is bound to its layer: a copy (a snapshot of the best model, an
    average of weights) computes with the copy's weights and does not feed the windows."""
    model = build_model(digits.input_shape, digits.n_classes)
    feedback = TEFeedback(model, TEConfig(reach=reach, layers=(-2, -1)), batch_size=32, seed=0)
    twin = copy.deepcopy(model)
    layer, twin_layer = linear_layers(model)[-1], linear_layers(twin)[-1]
    with torch.no_grad():
        twin_layer.weight.mul_(2.0)
    x = torch.rand(8, layer.in_features)
    torch.testing.assert_close(twin_layer(x), nn.functional.linear(x, twin_layer.weight, twin_layer.bias))
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    feedback.before_batch()  # capturing: the original's layer pushes to its window, the copy's does not
    counted = feedback._counted()
    twin.train()(digits.x_train[:8])
    np.testing.assert_array_equal(feedback._counted(), counted)
    model.train()(digits.x_train[:8])
    assert feedback._counted()[0] > counted[0]


def test_backprop_reach_with_lambda_zero_reproduces_the_baseline(digits):
    baseline = metrics(train(BASE, digits))
    te_zero = train(replace(BASE, te=replace(TE, lam=0.0, reach="backprop")), digits)
    assert [m[:4] for m in metrics(te_zero)] == [m[:4] for m in baseline]


@pytest.mark.parametrize("batch", [1, 63, 64, 65, 1000, 1024])
def test_activations_packed_where_they_are_reach_the_window_unchanged(batch):
    """The GPU route (binarize and pack on the device, copy only the words) on CPU tensors:
    the same block as copying the bools."""
    active = torch.rand(batch, 84, generator=torch.Generator().manual_seed(batch)) > 0.5
    packed, plain = np.full((84, batch), 7, np.uint8), np.full((84, batch), 7, np.uint8)
    fill_block(packed, active, packed=True)
    fill_block(plain, active, packed=False)
    assert np.array_equal(plain, active.numpy().T)
    assert np.array_equal(packed, plain)


def test_te_training_on_cuda_learns_with_the_packed_capture(digits):
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device here")
    spec = replace(BASE, te=TE)
    on_gpu = metrics(train(spec, digits, device="cuda"))
    assert on_gpu[-1][3] > 0.85 and on_gpu[-1][4] > 0  # test accuracy; mean TE from the packed words
    on_cpu = metrics(train(spec, digits))
    assert np.allclose([m[:4] for m in on_gpu], [m[:4] for m in on_cpu], atol=0.02)


def test_factors_are_set_as_torch_computed_them():
    """The refresh writes 1 + lam * TE in float32 into the factors, as the torch ops did, and
    adds to the diagnostics' running sums (pairs, TE > 0, sum and max of |factor - 1|)."""
    from tecli.te.feedback import _set_factors

    rng = np.random.default_rng(0)
    te = rng.random(500) * rng.integers(0, 2, 500) * 0.7
    flat = np.sort(rng.choice(2000, 500, replace=False))
    sums, deviations = np.zeros(4), []
    for scale in (1.0, -4.0, 0.3, 16.0):
        factor = np.ones(2000, np.float32)
        _set_factors(te, flat, scale, factor, sums)
        expected = torch.ones(2000)
        expected.index_copy_(0, torch.from_numpy(flat), torch.from_numpy(te).float().mul_(scale).add_(1.0))
        assert np.array_equal(factor, expected.numpy())
        deviations.append(np.abs(factor[flat].astype(np.float64) - 1.0))
        deviation = np.concatenate(deviations)
        assert sums[0] == len(deviation) and sums[1] == len(deviations) * (te > 0).sum()
        assert sums[3] == deviation.max() and sums[2] == pytest.approx(deviation.sum(), rel=1e-12)


@pytest.mark.parametrize("te", [
    TEConfig(window=128, refresh=1, fraction=1.0, layers=(-2, -1), threshold_out="uniform"),
    TEConfig(window=96, refresh=3, fraction=0.5, layers=(-2, -1), threshold=0.05, delay=1, lam=4.0, reach="backprop"),
])  # fmt: skip
def test_activations_pushed_as_they_are_train_as_captured_blocks_do(digits, te, monkeypatch):
    """Number thresholds on the CPU send the activations to the window (push_values); the
    route of other thresholds (capture into a block, push_block) trains the same run, bit
    for bit: metrics, TE statistics, feedback diagnostics and weights."""
    import tecli.te.feedback as feedback

    def run():
        training = train(replace(BASE, epochs=2, te=te), digits)
        epochs = iter(training)
        results = [next(epochs)]
        routes = {slot.thresholds is not None for slot in training.feedback._slots}
        results += list(epochs)
        diagnostics = [(r.source_fire_rate, r.target_fire_rate, r.te_positive_share, r.factor_dev_mean, r.factor_dev_max) for r in results]
        return metrics(results), diagnostics, training.model.state_dict(), routes

    values, values_diagnostics, values_weights, values_routes = run()
    monkeypatch.setattr(feedback, "_number_thresholds", lambda *args: None)
    blocks, blocks_diagnostics, blocks_weights, blocks_routes = run()
    assert values_routes == {True} and blocks_routes == {False}
    assert values == blocks and values_diagnostics == blocks_diagnostics
    for name, weight in values_weights.items():
        assert torch.equal(weight, blocks_weights[name]), name
