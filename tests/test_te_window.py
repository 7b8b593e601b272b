"""The sliding window equals the engine run on the window's samples directly."""

import numpy as np
import pytest

from tecli.te import SlidingPairTE, engine, transfer_entropy_pairs


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


def test_blocks_of_any_binary_layout_and_dtype_give_the_same_window(monkeypatch):
    rng = np.random.default_rng(2)
    sources = rng.integers(0, 2, (5, 300))
    targets = rng.integers(0, 2, (4, 300))
    pairs = np.array([[0, 0], [4, 3], [2, 1]])
    results = []
    for as_block in (
        lambda a: a,  # int64
        lambda a: np.asfortranarray(a.astype(bool)),  # what the feedback pushes: torch's .t().numpy()
        lambda a: a.astype(np.uint8),
    ):
        window = SlidingPairTE(5, 4, pairs, window_blocks=3, delay=2)
        for k in range(0, 300, 60):
            window.push(as_block(sources[:, k : k + 60]), as_block(targets[:, k : k + 60]))
        assert window.state_dict()["carry_src"].dtype == np.uint8
        results.append(window.te())
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
    expected = transfer_entropy_pairs(sources[:, 118:], targets[:, 118:], pairs, 2)  # 3 blocks and h = 2 carried
    np.testing.assert_allclose(results[0], expected, rtol=0, atol=1e-12)
    monkeypatch.setattr(engine, "PARALLEL_MIN_WORK", 0)  # the parallel counting kernel counts the same
    window = SlidingPairTE(5, 4, pairs, window_blocks=3, delay=2)
    for k in range(0, 300, 60):
        window.push(sources[:, k : k + 60], targets[:, k : k + 60])
    np.testing.assert_array_equal(window.te(), results[0])


def test_block_values_are_checked_before_the_window_changes():
    window = SlidingPairTE(3, 2, np.array([[0, 0]]), window_blocks=2)
    window.push(np.ones((3, 8), int), np.ones((2, 8), int))
    before = window.state_dict()
    with pytest.raises(ValueError, match="targets must be binary"):
        window.push(np.zeros((3, 8), int), np.full((2, 8), 2))
    for wrong in (np.empty(2), np.empty(1, np.float32), np.empty((1, 1))):  # the TE to read into: (1,) float64
        with pytest.raises(ValueError, match=r"out must be a writable float64 array of shape \(1,\)"):
            window.push(np.zeros((3, 8), int), np.zeros((2, 8), int), wrong)
    after = window.state_dict()
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("delay", [0, 1, 3])
@pytest.mark.parametrize("block", [1, 2, 5, 64])
def test_blocks_written_in_place_count_as_pushed_ones(delay, block, parallel, monkeypatch):
    """block() + push_block() (the training feedback's route) keeps the window's state
    exactly as push() does, across resets and a last, shorter block; the TE it reads in
    the same pass when asked (push_block(te)) is the window's te(), from the serial and
    the parallel kernel (the pairs in blocks, each counted then read)."""
    if parallel:
        monkeypatch.setattr(engine, "PARALLEL_MIN_WORK", 0)
    rng = np.random.default_rng(10 * block + delay)
    n_src, n_tgt = 5, 3
    pairs = np.array([[0, 0], [4, 2], [1, 1], [3, 0]])
    pushed = SlidingPairTE(n_src, n_tgt, pairs, 3, delay)
    written = SlidingPairTE(n_src, n_tgt, pairs, 3, delay)
    for k, size in enumerate([block] * 6 + [max(1, block - 1)] + [block] * 3):
        if k == 4:
            pushed.reset()
            written.reset()
        sources, targets = rng.integers(0, 2, (n_src, size)), rng.integers(0, 2, (n_tgt, size))
        pushed.push(sources, targets)
        src_view, tgt_view = written.block(size)
        src_view[...], tgt_view[...] = sources, targets
        read = np.full(len(pairs), np.nan)
        written.push_block(read)
        assert written.samples == pushed.samples
        np.testing.assert_array_equal(written.te(), pushed.te())
        np.testing.assert_array_equal(read, pushed.te())
        np.testing.assert_array_equal(written.counted, pushed.counted)
        for name, value in pushed.state_dict().items():
            np.testing.assert_array_equal(written.state_dict()[name], value, err_msg=name)
    assert pushed.te().max() >= 0 and pushed.counted[0] > 0
