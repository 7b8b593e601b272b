"""The Numba TE engine against an entropy-based NumPy reference and against pyinform."""

import subprocess
import sys

import numpy as np
import pyinform
import pytest

from tecli.te import (
    engine,
    pack_bits,
    pack_bits_torch,
    transfer_entropy,
    transfer_entropy_pairs,
)

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
@pytest.mark.parametrize("length", [130, 300, 1000, 4097])  # 3, 5, 16 and 65 words: the 4-word passes and the rest
def test_matrix_equals_pairs_equals_single(delay, length):
    rng = np.random.default_rng(11)
    sources = rng.integers(0, 2, (7, length))
    targets = rng.integers(0, 2, (5, length))
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


BINARY_DTYPES = [bool, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64]


@pytest.mark.parametrize("dtype", BINARY_DTYPES)
def test_every_binary_dtype_gives_the_same_matrix(dtype):
    rng = np.random.default_rng(9)
    sources = rng.integers(0, 2, (6, 200))  # 200: three full words and a partial one
    targets = rng.integers(0, 2, (4, 200))
    expected = transfer_entropy_pairs(sources, targets)
    np.testing.assert_array_equal(transfer_entropy_pairs(sources.astype(dtype), targets.astype(dtype)), expected)


@pytest.mark.parametrize("dtype", BINARY_DTYPES)
@pytest.mark.parametrize("where", [(0, 3), (2, 130), (5, 199)])  # first word, a later full word, the partial last
def test_non_binary_values_are_rejected_in_every_dtype(dtype, where):
    values = [2] if dtype is bool else [2, np.iinfo(dtype).max]
    if dtype is not bool and np.iinfo(dtype).min < 0:
        values += [-1, np.iinfo(dtype).min]
    for value in values:
        sources = np.zeros((6, 200), dtype)
        if dtype is bool:  # a bool byte other than 0/1, as a view of uint8 can make
            sources = sources.view(np.uint8)
            sources[where] = value
            sources = sources.view(bool)
        else:
            sources[where] = value
        with pytest.raises(ValueError, match="sources must be binary"):
            transfer_entropy_pairs(sources, np.zeros((4, 200), dtype))


def test_strided_and_byte_swapped_inputs():
    rng = np.random.default_rng(4)
    sources = rng.integers(0, 2, (5, 300))
    targets = rng.integers(0, 2, (3, 300))
    expected = transfer_entropy_pairs(sources, targets)
    f_order = np.asfortranarray(sources.astype(bool))  # what torch's .t().numpy() hands over
    np.testing.assert_array_equal(transfer_entropy_pairs(f_order, targets), expected)
    wide = np.zeros((5, 600), np.int64)
    wide[:, ::2] = sources
    np.testing.assert_array_equal(transfer_entropy_pairs(wide[:, ::2], targets), expected)
    np.testing.assert_array_equal(transfer_entropy_pairs(sources.astype(">i4"), targets.astype(">u2")), expected)


@pytest.mark.parametrize("length", [1, 63, 64, 65, 130, 1000])
def test_pack_bits_is_numpy_little_endian_packbits(length):
    rng = np.random.default_rng(length)
    series = rng.integers(0, 2, (3, length))
    packed = np.packbits(series.astype(np.uint8), axis=1, bitorder="little")
    padded = np.zeros((3, 8 * ((length + 63) // 64)), np.uint8)
    padded[:, : packed.shape[1]] = packed
    np.testing.assert_array_equal(pack_bits(series), padded.view("<u8"))
    np.testing.assert_array_equal(pack_bits(series.astype(bool)), padded.view("<u8"))


@pytest.mark.parametrize("length", [1, 63, 64, 65, 1000, 1024])
def test_pack_bits_torch_equals_the_numpy_packing(length):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(length)
    active = rng.integers(0, 2, (7, length)).astype(bool)
    words = pack_bits_torch(torch.from_numpy(active))
    assert words.dtype == torch.int64 and tuple(words.shape) == (7, (length + 63) // 64)
    np.testing.assert_array_equal(words.numpy().view(np.uint64), pack_bits(active))
    transposed = torch.from_numpy(np.ascontiguousarray(active.T)).t()  # non-contiguous, as in the feedback
    np.testing.assert_array_equal(pack_bits_torch(transposed).numpy().view(np.uint64), pack_bits(active))


def test_pack_bits_torch_wants_a_2d_bool_tensor():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="2-D bool tensor"):
        pack_bits_torch(torch.zeros((2, 8), dtype=torch.int64))


@pytest.mark.parametrize("delay", [0, 1, 3])
def test_parallel_kernels_equal_serial_ones(monkeypatch, delay):
    rng = np.random.default_rng(delay)
    sources = rng.integers(0, 2, (9, 300)).astype(bool)
    targets = rng.integers(0, 2, (7, 300))
    pairs = np.stack([rng.integers(0, 9, 40), rng.integers(0, 7, 40)], axis=1)
    matrix = transfer_entropy_pairs(sources, targets, delay=delay)
    listed = transfer_entropy_pairs(sources, targets, pairs, delay)
    monkeypatch.setattr(engine, "PARALLEL_MIN_WORK", 0)
    np.testing.assert_array_equal(transfer_entropy_pairs(sources, targets, delay=delay), matrix)
    np.testing.assert_array_equal(transfer_entropy_pairs(sources, targets, pairs, delay), listed)
    with pytest.raises(ValueError, match="targets must be binary"):
        transfer_entropy_pairs(sources, targets - 1, delay=delay)
    with pytest.raises(ValueError, match="sources must be binary"):
        transfer_entropy_pairs(2 * sources.astype(np.int8), targets, pairs, delay)


def test_importing_the_engine_does_not_import_torch():
    code = "import sys, tecli.te; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
