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


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize(  # a history past one word (65), carried across word boundaries
    "delay, block", [(d, b) for d in (0, 1, 3) for b in (1, 2, 5, 64, 70)] + [(65, 70), (65, 140)]
)
def test_activations_pushed_with_thresholds_count_as_their_comparisons(delay, block, parallel, monkeypatch):
    """push_values(activations, thresholds) (the feedback's route for number thresholds)
    keeps the window's state exactly as push() of the float32 comparisons, transposed, does:
    across resets, blocks shorter than the history, a last shorter block, ties with the
    threshold and NaN; the TE read in the same call is the window's te()."""
    if parallel:
        monkeypatch.setattr(engine, "PARALLEL_MIN_WORK", 0)
    rng = np.random.default_rng(100 * block + delay)
    n_src, n_tgt = 7, 4
    pairs = np.array([[0, 0], [6, 3], [1, 1], [3, 0], [2, 2]])
    compared = SlidingPairTE(n_src, n_tgt, pairs, 3, delay)
    thresholded = SlidingPairTE(n_src, n_tgt, pairs, 3, delay)
    g_src, g_tgt = 0.25, 0.1  # not exact in float32: compared as float32, as torch's and NumPy's float32 arrays are
    for k, size in enumerate([block] * 6 + [max(1, block - 1)] + [block] * 3):
        if k == 4:
            compared.reset()
            thresholded.reset()
        sources = rng.normal(0.25, 0.5, (size, n_src)).astype(np.float32)
        targets = rng.normal(0.1, 0.5, (size, n_tgt)).astype(np.float32)
        sources[0, 0], targets[-1, 0] = np.float32(g_src), np.float32(g_tgt)  # ties do not fire
        sources[-1, 1] = np.nan
        compared.push(np.greater(sources, np.float32(g_src)).T, np.greater(targets, np.float32(g_tgt)).T)
        read = np.full(len(pairs), np.nan)
        thresholded.push_values(sources, g_src, targets, g_tgt, read)
        np.testing.assert_array_equal(read, compared.te())
        np.testing.assert_array_equal(thresholded.counted, compared.counted)
        for name, value in compared.state_dict().items():
            np.testing.assert_array_equal(thresholded.state_dict()[name], value, err_msg=name)
    assert compared.counted[0] > 0 and (block < 5 or compared.te().max() > 0)


def test_activations_must_be_float32_rows_of_the_layer_width():
    window = SlidingPairTE(3, 2, np.array([[0, 0]]), window_blocks=2)
    window.push_values(np.ones((8, 3), np.float32), 0.5, np.ones((8, 2), np.float32), 0.5)  # a new stream: carries filled
    before = window.state_dict()
    for sources, targets in (
        (np.ones((8, 3), np.float64), np.ones((8, 2), np.float32)),
        (np.ones((8, 3), np.float32), np.ones((8, 3), np.float32)),
        (np.ones((3, 8), np.float32).T, np.ones((8, 2), np.float32)),
        (np.ones((8, 3), np.float32), np.ones((7, 2), np.float32)),
        (np.ones((), np.float32), np.ones((8, 2), np.float32)),
        (np.ones(8, np.float32), np.ones((8, 2), np.float32)),
    ):
        with pytest.raises(ValueError, match="must be (C-contiguous )?float32"):
            window.push_values(sources, 0.5, targets, 0.5)
    for name, value in before.items():
        np.testing.assert_array_equal(window.state_dict()[name], value)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("delay", [0, 2])
def test_a_window_of_every_pair_in_matrix_order_reads_the_same_te(delay, parallel, monkeypatch):
    """Every pair in the order p = j * n_sources + i takes the engine's dense count loop and
    TE read (in parallel, in blocks that cut rows): its counts and TE equal the general
    ones of the same pairs in another order, and the engine run on the window's samples."""
    if parallel:
        monkeypatch.setattr(engine, "PARALLEL_MIN_WORK", 0)
    rng = np.random.default_rng(delay)
    n_src, n_tgt, block = 6, 5, 40
    every = np.arange(n_src * n_tgt)
    pairs = np.stack([every % n_src, every // n_src], axis=1)
    order = rng.permutation(len(pairs))
    dense = SlidingPairTE(n_src, n_tgt, pairs, 2, delay, parallel=parallel)
    shuffled = SlidingPairTE(n_src, n_tgt, pairs[order], 2, delay, parallel=False)
    assert dense._dense and not shuffled._dense
    sources = rng.normal(size=(6 * block, n_src)).astype(np.float32)
    targets = np.roll(sources[:, :n_tgt], delay, axis=0) + rng.normal(0, 0.5, (6 * block, n_tgt)).astype(np.float32)
    for k in range(6):
        rows = slice(k * block, (k + 1) * block)
        read, read_shuffled = np.empty(len(pairs)), np.empty(len(pairs))
        if k % 2:
            dense.push_values(sources[rows], 0.0, targets[rows], 0.0, read)
        else:
            dense.push((sources[rows] > 0).T, (targets[rows] > 0).T, read)
        shuffled.push_values(sources[rows], 0.0, targets[rows], 0.0, read_shuffled)
        np.testing.assert_array_equal(read[order], read_shuffled)
        for name in ("ring_pair", "total_pair"):  # the dense count loop (blocks that cut rows, in parallel)
            np.testing.assert_array_equal(dense.state_dict()[name][..., order, :], shuffled.state_dict()[name])
    start = 4 * block - max(1, delay)
    expected = transfer_entropy_pairs((sources[start:] > 0).T, (targets[start:] > 0).T, pairs, delay)
    np.testing.assert_allclose(read, expected, rtol=0, atol=1e-12)
    assert read.max() > 0.1


@pytest.mark.parametrize("parallel", [False, True])
def test_a_window_without_sources_or_targets_pushes_and_reads_nothing(parallel, monkeypatch):
    """No pairs is every pair of a 0 x n matrix: the dense loops must not divide by no sources."""
    if parallel:
        monkeypatch.setattr(engine, "PARALLEL_MIN_WORK", 0)
    for n_src, n_tgt in ((0, 3), (3, 0)):
        window = SlidingPairTE(n_src, n_tgt, np.zeros((0, 2), int), 2, parallel=parallel)
        read = np.empty(0)
        for _ in range(3):
            window.push_values(np.ones((5, n_src), np.float32), 0.0, np.ones((5, n_tgt), np.float32), 0.0, read)
            window.push(np.ones((n_src, 5), int), np.ones((n_tgt, 5), int), read)
        assert window.samples == 2 * 5 and window.te().shape == (0,)


def _fractional_counts(state):
    ring, total = state["ring_pair"].astype(float), state["total_pair"].astype(float)
    ring[:, 0, 0] += 0.5
    total[0, 0] = ring[:, 0, 0].sum()
    state["ring_pair"], state["total_pair"] = ring, total


def _unpaired_target_above_its_block(state):
    """Target 0 is in no pair: only the targets' part of TE reads its counts."""
    state["ring_target"][0, 0, 0] = state["ring_n"][0] + 1
    state["total_target"][0, 0] = state["ring_target"][:, 0, 0].sum()


def test_a_restored_state_that_no_window_can_reach_is_refused():
    """The kernels read the k log2 k table at cell counts without bounds checks: a state whose
    counts contradict each other (from a damaged checkpoint) is refused, leaving the window
    as it was, and a real one loads."""
    rng = np.random.default_rng(7)
    window = SlidingPairTE(4, 4, np.array([[0, 1], [3, 2], [1, 1]]), window_blocks=2, delay=1)  # target 0 unpaired
    for _ in range(3):
        window.push(rng.integers(0, 2, (4, 16)), rng.integers(0, 2, (4, 16)))
    good = window.state_dict()
    window.load_state_dict(good)
    damaged = {
        "pair count above its source's": lambda s: s["ring_pair"].__setitem__((0, 0, 0), 17),
        "totals not the ring's sum": lambda s: s["total_source"].__setitem__(0, s["total_source"][0] + 1),
        "slot outside the ring": lambda s: s.__setitem__("slot", 2),
        "carried value not 0/1": lambda s: s["carry_src"].__setitem__((0, 0), 2),
        "fractional counts (held as integers, their sums differ)": _fractional_counts,
        "unpaired target counting more ones than its block's triples": _unpaired_target_above_its_block,
    }
    for name, damage in damaged.items():
        state = {key: value.copy() if isinstance(value, np.ndarray) else value for key, value in good.items()}
        damage(state)
        with pytest.raises(ValueError, match="window state is inconsistent"):
            window.load_state_dict(state)
        after = window.state_dict()
        assert all(np.array_equal(after[key], value) for key, value in good.items()), name


def test_activations_of_another_dtype_are_refused_on_every_route():
    window = SlidingPairTE(3, 2, np.array([[0, 0]]), window_blocks=2)
    for _ in range(2):  # a new stream (the fallback), then one that follows carried samples
        with pytest.raises(ValueError, match="sources must be float32"):
            window.push_values(np.ones((8, 3)), 0.5, np.ones((8, 2), np.float32), 0.5)
        window.push_values(np.ones((8, 3), np.float32), 0.5, np.ones((8, 2), np.float32), 0.5)


def test_the_kernel_first_route_refuses_what_the_checks_refused():
    """push_values calls its kernel before any Python check: a TE array of the wrong length,
    dtype or a read-only one, and thresholds of other number types, go through the checks
    (which raise, leaving the window as it was) or count as the float threshold does."""
    rng = np.random.default_rng(3)
    pairs = np.array([[0, 0], [2, 1]])
    window, reference = SlidingPairTE(3, 2, pairs, window_blocks=2), SlidingPairTE(3, 2, pairs, window_blocks=2)
    blocks = [(rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32)) for _ in range(4)]
    for (sources, targets), g in zip(blocks, (0.25, np.float32(0.25), 0, np.float64(0.25))):
        window.push_values(sources, g, targets, g)
        reference.push_values(sources, float(g), targets, float(g))
    np.testing.assert_array_equal(window.te(), reference.te())
    before = window.state_dict()
    read_only = np.zeros(2)
    read_only.flags.writeable = False
    sources, targets = blocks[0]
    for te in (np.zeros(3), np.zeros(2, np.float32), read_only):
        with pytest.raises(ValueError, match="out must be a writable float64 array of shape"):
            window.push_values(sources, 0.0, targets, 0.0, te)
    for name, value in before.items():
        np.testing.assert_array_equal(window.state_dict()[name], value)


def test_read_only_activations_and_a_strided_te_array_are_pushed_as_copies():
    """Arrays that the kernel's signature does not take (read-only activations, a TE array
    that is a strided view) go through the checked route, which copies them: the same
    window and TE as writable, contiguous ones."""
    rng = np.random.default_rng(5)
    pairs = np.array([[0, 0], [2, 1], [1, 1]])
    window, reference = SlidingPairTE(3, 2, pairs, window_blocks=2), SlidingPairTE(3, 2, pairs, window_blocks=2)
    for _ in range(4):
        sources, targets = rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32)
        expected = np.empty(3)
        reference.push_values(sources, 0.0, targets, 0.0, expected)
        buffer = np.full(6, np.nan)
        sources.flags.writeable = targets.flags.writeable = False
        window.push_values(sources, 0.0, targets, 0.0, buffer[::2])
        np.testing.assert_array_equal(buffer[::2], expected)
        assert np.isnan(buffer[1::2]).all()
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(window.state_dict()[name], value)
