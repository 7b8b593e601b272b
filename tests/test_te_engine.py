"""The Numba TE engine against an entropy-based NumPy reference and against pyinform."""

import numpy as np
import pyinform
import pytest

from tecli.te import transfer_entropy, transfer_entropy_pairs

TOL = 1e-9


def _entropy(*columns: np.ndarray) -> float:
    """Plug-in joint Shannon entropy (bits) of aligned discrete columns."""
    _, counts = np.unique(np.stack(columns, axis=1), axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def reference_te(x, y, delay: int) -> float:
    """TE = H(a,b) - H(b) - H(a,b,c) + H(b,c), a = y(t), b = y(t-1), c = x(t-d)."""
    x = np.asarray(x, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    h = max(1, delay)
    t = np.arange(h, len(y))
    a, b, c = y[t], y[t - 1], x[t - delay]
    return _entropy(a, b) - _entropy(b) - _entropy(a, b, c) + _entropy(b, c)


def coupled(rng, length, flips):
    x = rng.integers(0, 2, length)
    y = np.roll(x, 1)
    y[0] = 0
    y[rng.choice(length, flips, replace=False)] ^= 1
    return x, y


@pytest.mark.parametrize("length", [3, 5, 17, 63, 64, 65, 127, 128, 129, 191, 192, 193, 1000, 4097])
@pytest.mark.parametrize("delay", [0, 1, 2])
def test_random_series_match_reference(length, delay):
    rng = np.random.default_rng(length * 10 + delay)
    x = rng.integers(0, 2, length)
    y = rng.integers(0, 2, length)
    assert transfer_entropy(x, y, delay) == pytest.approx(reference_te(x, y, delay), abs=TOL)
    assert transfer_entropy(y, x, delay) == pytest.approx(reference_te(y, x, delay), abs=TOL)


@pytest.mark.parametrize("length", [2, 3, 63, 64, 65, 127, 128, 129, 1000])
def test_delay_one_matches_pyinform(length):
    rng = np.random.default_rng(length)
    x = rng.integers(0, 2, length)
    y = rng.integers(0, 2, length)
    assert transfer_entropy(x, y) == pytest.approx(pyinform.transfer_entropy(x, y, k=1), abs=TOL)
    xc, yc = coupled(rng, length, max(1, length // 50)) if length > 2 else (x, y)
    assert transfer_entropy(xc, yc) == pytest.approx(pyinform.transfer_entropy(xc, yc, k=1), abs=TOL)


def test_coupled_series_is_directional():
    rng = np.random.default_rng(7)
    x, y = coupled(rng, 5000, 25)
    forward = transfer_entropy(x, y, delay=1)
    backward = transfer_entropy(y, x, delay=1)
    assert forward > 0.9
    assert backward < 0.01
    assert forward == pytest.approx(pyinform.transfer_entropy(x, y, k=1), abs=TOL)
    assert backward == pytest.approx(pyinform.transfer_entropy(y, x, k=1), abs=TOL)


def test_delay_selects_the_coupling_lag():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, 3000)
    y = np.roll(x, 2)  # y(t) = x(t-2)
    assert transfer_entropy(x, y, delay=2) > 0.95
    assert transfer_entropy(x, y, delay=1) < 0.01
    same_sample = x.copy()
    assert transfer_entropy(x, same_sample, delay=0) > 0.95


@pytest.mark.parametrize("value", [0, 1])
def test_constant_series_give_zero(value):
    rng = np.random.default_rng(1)
    const = np.full(200, value)
    noise = rng.integers(0, 2, 200)
    assert transfer_entropy(noise, const) == 0.0
    assert transfer_entropy(const, noise) == pytest.approx(0.0, abs=TOL)
    assert transfer_entropy(const, noise) == pytest.approx(pyinform.transfer_entropy(const, noise, k=1), abs=TOL)


def test_bool_and_integer_inputs_agree():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2, 300)
    y = rng.integers(0, 2, 300)
    expected = transfer_entropy(x, y)
    assert transfer_entropy(x.astype(bool), y.astype(bool)) == expected
    assert transfer_entropy(x.astype(np.uint8), y.astype(np.int32)) == expected


@pytest.mark.parametrize("delay", [0, 1, 2])
def test_matrix_equals_pairs_equals_single(delay):
    rng = np.random.default_rng(11)
    sources = rng.integers(0, 2, (7, 130))
    targets = rng.integers(0, 2, (5, 130))
    targets[2] = np.roll(sources[4], 1)
    matrix = transfer_entropy_pairs(sources, targets, delay=delay)
    assert matrix.shape == (5, 7)
    pairs = np.array([[i, j] for j in range(5) for i in range(7)])
    np.testing.assert_array_equal(transfer_entropy_pairs(sources, targets, pairs, delay), matrix.ravel())
    subset = pairs[rng.permutation(len(pairs))[:9]]
    values = transfer_entropy_pairs(sources, targets, subset, delay)
    for (i, j), value in zip(subset, values):
        assert value == pytest.approx(reference_te(sources[i], targets[j], delay), abs=TOL)
        assert value == transfer_entropy(sources[i], targets[j], delay)
    if delay == 1:
        assert matrix[2, 4] > 0.9


def test_empty_pairs_give_empty_result():
    out = transfer_entropy_pairs(np.zeros((2, 10), int), np.zeros((3, 10), int), np.zeros((0, 2), int))
    assert out.shape == (0,)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: transfer_entropy([0, 1, 0], [0, 1]), "same length"),
        (lambda: transfer_entropy([0, 2, 1], [0, 1, 1]), "binary"),
        (lambda: transfer_entropy([0.0, 1.0, 1.0], [0, 1, 1]), "binary"),
        (lambda: transfer_entropy([0, 1], [1, 0], delay=2), "too short"),
        (lambda: transfer_entropy([0], [1], delay=0), "too short"),
        (lambda: transfer_entropy([0, 1, 1], [0, 1, 1], delay=-1), "delay must be >= 0"),
        (lambda: transfer_entropy([0, 1, 1], [0, 1, 1], delay=1.5), "delay must be an integer"),
        (lambda: transfer_entropy([[0, 1, 1]], [0, 1, 1]), "1-D"),
        (lambda: transfer_entropy_pairs([0, 1, 1], [[0, 1, 1]]), "2-D"),
        (lambda: transfer_entropy_pairs([[0, 1, 1]], [[0, 1, 1, 0]]), "same length"),
        (lambda: transfer_entropy_pairs([[0, 1, 1]], [[0, 1, 1]], [[1, 0]]), "source index out of range"),
        (lambda: transfer_entropy_pairs([[0, 1, 1]], [[0, 1, 1]], [[0, -1]]), "target index out of range"),
        (lambda: transfer_entropy_pairs([[0, 1, 1]], [[0, 1, 1]], [0, 0]), r"shape \(P, 2\)"),
        (lambda: transfer_entropy_pairs([[0, 1, 1]], [[0, 1, 1]], [[0.0, 0.0]]), "integer"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("bad", [[0, 1, 256], [0, 1, -255], [0, 2, 1], [-1, 0, 1]])
def test_values_that_wrap_in_uint8_are_not_binary(bad):
    with pytest.raises(ValueError, match="binary"):
        transfer_entropy(np.array(bad, dtype=np.int64), np.array([0, 1, 1]))
