"""TE engine vs pyinform and vs the word-work limit, on the same data in one process.

Claim: at P = 10,080 pairs (every pair of a 120 -> 84 layer pair) and T = 1024,
`transfer_entropy_pairs` computes the full TE matrix at >= 100 M pairs/s on two
cores, >= 2,000x pyinform, timed from raw 0/1 arrays (bool and int64): checking the
values and packing the bits are included.  (From int64 the input is 8x the bytes of
bool, 1.7 MB here, and reading it costs more than packing bool.)

The word-work limit is what a kernel doing nothing but the counting word work (per
64 samples of a pair: 3 AND + 3 POPCNT + 3 ADD) reaches over the same packed data
on all the cores, in two loop arrangements: pair by pair over the words, and the
sources in SIMD lanes (the engine's).  The faster of the two is the limit, and the
engine's fraction of it is printed.  pyinform is called once per pair, the only way
it can be used.  Best of many repeats each (of 3 for pyinform).

The feedback's window path is timed on the same layer pair: a block of 64 samples (a
mini-batch) pushed into a window of 16 blocks, with the TE of every pair over the
window read in the same call, as the training feedback does before each refresh:
as a 0/1 block on the window's default threads, and as float32 activations with a
threshold in one thread, the training feedback's own route.

    python benchmarks/te_engine.py
"""

import itertools
import time

import numba as nb
import numpy as np
import pyinform

from tecli.te import SlidingPairTE, pack_bits, transfer_entropy_pairs
from tecli.te.engine import _popcount

N_SRC, N_TGT = 120, 84
CLAIM_LENGTH, CLAIM_RATE, CLAIM_RATIO = 1024, 100e6, 2000


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@nb.njit(parallel=True)
def word_work_by_pair(a, b, ab, c, out):
    """Pair by pair: 3 AND + 3 POPCNT + 3 ADD per word, words innermost."""
    for j in nb.prange(a.shape[0]):
        for i in range(c.shape[0]):
            ac = 0
            bc = 0
            abc = 0
            for w in range(c.shape[1]):
                ac += _popcount(a[j, w] & c[i, w])
                bc += _popcount(b[j, w] & c[i, w])
                abc += _popcount(ab[j, w] & c[i, w])
            out[j, i] = ac + bc + abc


@nb.njit(parallel=True)
def word_work_in_lanes(a, b, ab, c_words, out, n_blocks):
    """The same word work with the sources innermost (c_words is (W, n_src)), in one
    block of targets per thread, as the engine runs it."""
    n_src = c_words.shape[1]
    for k in nb.prange(n_blocks):
        ac = np.empty(n_src, np.int64)
        bc = np.empty(n_src, np.int64)
        abc = np.empty(n_src, np.int64)
        for j in range(k * a.shape[0] // n_blocks, (k + 1) * a.shape[0] // n_blocks):
            ac[:] = 0
            bc[:] = 0
            abc[:] = 0
            for w in range(c_words.shape[0]):
                aw, bw, abw = a[j, w], b[j, w], ab[j, w]
                for i in range(n_src):
                    ac[i] += _popcount(aw & c_words[w, i])
                    bc[i] += _popcount(bw & c_words[w, i])
                    abc[i] += _popcount(abw & c_words[w, i])
            for i in range(n_src):
                out[j, i] = ac[i] + bc[i] + abc[i]


def word_work_rates(sources, targets) -> tuple[float, float]:
    """Pairs/s of the two word-work kernels over the packed series (b and a&b stand-ins
    of the size of a: what a popcount costs does not depend on the bits)."""
    c = pack_bits(sources)
    a = pack_bits(targets)
    b = np.ascontiguousarray(a[::-1])
    ab = a & b
    c_words = np.ascontiguousarray(c.T)
    out = np.empty((len(a), len(c)), np.int64)
    threads = nb.get_num_threads()
    runs = (lambda: word_work_by_pair(a, b, ab, c, out), lambda: word_work_in_lanes(a, b, ab, c_words, out, threads))
    rates = []
    for run in runs:
        run()  # compile
        rates.append(out.size / best_seconds(run, repeats=2000))
    return rates[0], rates[1]


def window_rates(rng) -> tuple[float, float]:
    """Pairs/s of the window's push-and-read: every pair of the layer pair, 64-sample
    blocks, a window of 16 blocks (1024 samples), delay 0.  (0/1 blocks written in place
    with push_block, the window's defaults: the pairs split over the threads;
    float32 activations and threshold 0 with push_values in one thread, as the training
    feedback pushes them while torch's threads hold the cores.)"""
    flat = np.arange(N_SRC * N_TGT)
    pairs = np.stack([flat % N_SRC, flat // N_SRC], axis=1)
    te = np.empty(len(flat))
    activations = [(rng.normal(size=(64, N_SRC)).astype(np.float32), rng.normal(size=(64, N_TGT)).astype(np.float32))
                   for _ in range(32)]  # fmt: skip
    blocks = [((sources > 0).T, (targets > 0).T) for sources, targets in activations]
    window = SlidingPairTE(N_SRC, N_TGT, pairs, window_blocks=16)
    feedback_window = SlidingPairTE(N_SRC, N_TGT, pairs, window_blocks=16, parallel=False)
    stream, values = itertools.cycle(blocks), itertools.cycle(activations)

    def push():
        sources, targets = window.block(64)
        sources[...], targets[...] = next(stream)
        window.push_block(te)

    def push_values():
        sources, targets = next(values)
        feedback_window.push_values(sources, 0.0, targets, 0.0, te)

    rates = []
    for run in (push, push_values):
        for _ in range(len(blocks)):
            run()  # fill the window; compile / load the Numba cache
        rates.append(len(flat) / best_seconds(run, repeats=2000))
    return rates[0], rates[1]


def main() -> None:
    rng = np.random.default_rng(0)
    n_pairs = N_SRC * N_TGT
    print(f"P = {n_pairs} pairs ({N_SRC} sources x {N_TGT} targets), delay 1, {nb.get_num_threads()} threads")
    for length in (64, 1024):
        sources = rng.integers(0, 2, (N_SRC, length))
        targets = rng.integers(0, 2, (N_TGT, length))
        engine = {}
        for dtype in (bool, np.int64):
            src, tgt = sources.astype(dtype), targets.astype(dtype)
            transfer_entropy_pairs(src, tgt)  # compile / load the Numba cache
            engine[np.dtype(dtype).name] = n_pairs / best_seconds(lambda: transfer_entropy_pairs(src, tgt), repeats=2000)

        def pyinform_all():
            return [pyinform.transfer_entropy(sources[i], targets[j], k=1) for j in range(N_TGT) for i in range(N_SRC)]

        pyinform_rate = n_pairs / best_seconds(pyinform_all, repeats=3)
        matrix = transfer_entropy_pairs(sources, targets)
        assert np.allclose(matrix.ravel(), pyinform_all(), atol=1e-9), "engine and pyinform disagree"
        by_pair, in_lanes = word_work_rates(sources, targets)
        limit = max(by_pair, in_lanes)

        print(f"\nT = {length}  (M pairs/s)")
        for name, rate in engine.items():
            print(f"  engine from {name:<5} {rate / 1e6:9.1f}   {rate / pyinform_rate:6.0f}x pyinform"
                  f"   {rate / limit:4.0%} of the word-work limit   ({n_pairs / rate * 1e6:.0f} us a call)")  # fmt: skip
        print(f"  pyinform          {pyinform_rate / 1e6:9.4f}")
        print(f"  word-work limit   {limit / 1e6:9.1f}   (pair by pair {by_pair / 1e6:.1f}, sources in lanes {in_lanes / 1e6:.1f})")
        if length == CLAIM_LENGTH:
            verdicts = [
                f"{name} {'met' if rate >= CLAIM_RATE and rate / pyinform_rate >= CLAIM_RATIO else 'NOT met'}"
                for name, rate in engine.items()
            ]
            print(f"  claim (>= {CLAIM_RATE / 1e6:.0f} M pairs/s, >= {CLAIM_RATIO:,}x pyinform): {', '.join(verdicts)}")
    blocks, values = window_rates(rng)
    print(f"\nwindow: push a 64-sample block and read the TE of all {n_pairs} pairs over 1024 samples (M pairs/s)")
    print(f"  0/1 block (push_block), {nb.get_num_threads()} threads          {blocks / 1e6:9.1f}   ({n_pairs / blocks * 1e6:.0f} us a call)")
    print(f"  activations (push_values), 1 thread    {values / 1e6:9.1f}   ({n_pairs / values * 1e6:.0f} us a call: "
          "the training feedback's route)")


if __name__ == "__main__":
    main()
