"""The sliding window equals the engine run on the window's samples directly."""

import numpy as np
import pytest

from tecli.te import SlidingPairTE, transfer_entropy_pairs


@pytest.mark.parametrize("delay", [0, 1, 2])
@pytest.mark.parametrize("block, window_blocks", [(64, 4), (50, 3), (7, 1), (1, 5)])
def test_window_matches_direct_computation(delay, block, window_blocks):
    rng = np.random.default_rng(block + delay)
    n_src, n_tgt, length = 6, 4, block * 11
    sources = rng.integers(0, 2, (n_src, length))
    targets = rng.integers(0, 2, (n_tgt, length))
    targets[1] = np.roll(sources[2], delay)  # one strongly coupled pair
    pairs = np.array([[0, 0], [2, 1], [5, 3], [2, 2], [1, 1]])
    window = SlidingPairTE(n_src, n_tgt, pairs, window_blocks, delay)
    h = max(1, delay)
    for k in range(length // block):
        window.push(sources[:, k * block : (k + 1) * block], targets[:, k * block : (k + 1) * block])
        end = (k + 1) * block
        start = max(0, end - window_blocks * block - h)  # the window's triples need h samples before it
        if end - start <= h:
            assert window.samples == 0
            continue
        expected = transfer_entropy_pairs(sources[:, start:end], targets[:, start:end], pairs, delay)
        assert window.samples == end - max(start + h, h)
        np.testing.assert_allclose(window.te(), expected, rtol=0, atol=1e-12)


def test_reset_starts_a_new_stream():
    rng = np.random.default_rng(0)
    sources = rng.integers(0, 2, (3, 128))
    targets = rng.integers(0, 2, (2, 128))
    pairs = np.array([[0, 0], [2, 1]])
    window = SlidingPairTE(3, 2, pairs, window_blocks=2, delay=1)
    window.push(sources[:, :64], targets[:, :64])
    window.reset()
    window.push(sources[:, 64:], targets[:, 64:])
    np.testing.assert_allclose(window.te(), transfer_entropy_pairs(sources[:, 64:], targets[:, 64:], pairs, 1), atol=1e-12)


def test_block_shape_is_checked():
    window = SlidingPairTE(3, 2, np.array([[0, 0]]), window_blocks=2)
    with pytest.raises(ValueError, match="block shapes"):
        window.push(np.zeros((2, 8), int), np.zeros((2, 8), int))
