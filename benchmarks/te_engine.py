"""TE engine vs pyinform on the same data in one process: pairs per second and ratio.

P = 10080 pairs (every pair of a 120 -> 84 layer pair), T in {64, 1024}.  The engine
is timed from raw 0/1 arrays (validation and bit packing included); pyinform is
called once per pair, the only way it can be used.  Best of several repeats each.

    python benchmarks/te_engine.py
"""

import time

import numpy as np
import pyinform

from tecli.te import transfer_entropy_pairs

N_SRC, N_TGT = 120, 84


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    n_pairs = N_SRC * N_TGT
    print(f"P = {n_pairs} pairs ({N_SRC} x {N_TGT}), delay 1")
    print(f"{'T':>6} {'engine pairs/s':>16} {'pyinform pairs/s':>18} {'ratio':>8}")
    for length in (64, 1024):
        sources = rng.integers(0, 2, (N_SRC, length))
        targets = rng.integers(0, 2, (N_TGT, length))
        transfer_entropy_pairs(sources, targets)  # compile / load the Numba cache
        engine_s = best_seconds(lambda: transfer_entropy_pairs(sources, targets), repeats=20)

        def pyinform_all():
            return [pyinform.transfer_entropy(sources[i], targets[j], k=1) for j in range(N_TGT) for i in range(N_SRC)]

        pyinform_s = best_seconds(pyinform_all, repeats=3)
        matrix = transfer_entropy_pairs(sources, targets)
        assert np.allclose(matrix.ravel(), pyinform_all(), atol=1e-9), "engine and pyinform disagree"
        print(f"{length:>6} {n_pairs / engine_s:>16,.0f} {n_pairs / pyinform_s:>18,.0f} {pyinform_s / engine_s:>7.0f}x")


if __name__ == "__main__":
    main()
