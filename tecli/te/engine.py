"""Transfer entropy between binary series, compiled with Numba.

TE(X -> Y) is Schreiber's transfer entropy with history 1 on both sides, in bits,
estimated with plug-in counts over the aligned triples

    a = y(t),  b = y(t-1),  c = x(t-d),   t = h .. T-1,  h = max(1, d)

so N = T - h triples.  For binary series every one of the eight counts n_abc
follows from N and seven popcounts over bit-packed words:

    target side (shared by all pairs of a target):  #a, #b, #(a&b)
    source side (shared by all pairs of a source):  #c
    per pair:                                       #(a&c), #(b&c), #(a&b&c)

Only the three per-pair popcounts cost O(P * N / 64); everything else is
O((n_src + n_tgt) * N / 64).  Counts are additive over disjoint sets of triples,
which is what `tecli.te.window.SlidingPairTE` uses to slide a window over a stream
of mini-batches without repacking old samples.
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def _popcount(typingctx, word):
    """Hardware popcount (LLVM ctpop) of a uint64."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


def _pack(bits, start, length):
    """Pack bits[:, start:start+length] (uint8 0/1) into zero-padded uint64 words.

    Every series is packed the same way, so the bit order inside a word does not
    matter for the popcounts of their ANDs.
    """
    packed = np.packbits(bits[:, start : start + length], axis=1, bitorder="little")
    out = np.zeros((bits.shape[0], 8 * ((length + 63) // 64)), np.uint8)
    out[:, : packed.shape[1]] = packed
    return out.view(np.uint64)


@nb.njit(cache=True)
def _row_counts(a, b):
    """Per row: #a, #b, #(a&b)."""
    out = np.zeros((a.shape[0], 3), np.int64)
    for r in range(a.shape[0]):
        for w in range(a.shape[1]):
            out[r, 0] += _popcount(a[r, w])
            out[r, 1] += _popcount(b[r, w])
            out[r, 2] += _popcount(a[r, w] & b[r, w])
    return out


@nb.njit(cache=True)
def _row_popcounts(c):
    out = np.zeros(c.shape[0], np.int64)
    for r in range(c.shape[0]):
        for w in range(c.shape[1]):
            out[r] += _popcount(c[r, w])
    return out


@nb.njit(inline="always")
def _count_pair(a, b, c, i, j, out, p):
    """out[p] = #(a_j & c_i), #(b_j & c_i), #(a_j & b_j & c_i)."""
    n_ac = 0
    n_bc = 0
    n_abc = 0
    for w in range(a.shape[1]):
        ac = a[j, w] & c[i, w]
        n_ac += _popcount(ac)
        n_bc += _popcount(b[j, w] & c[i, w])
        n_abc += _popcount(ac & b[j, w])
    out[p, 0] = n_ac
    out[p, 1] = n_bc
    out[p, 2] = n_abc


# Two kernels with their own bodies: Numba's on-disk cache keys on the function's
# bytecode and signature, not on `parallel`, so one body compiled twice would share
# (and mix up) a single cache entry.
@nb.njit(cache=True)
def _pair_counts_serial(a, b, c, pairs):
    out = np.empty((pairs.shape[0], 3), np.int64)
    for p in range(pairs.shape[0]):
        _count_pair(a, b, c, pairs[p, 0], pairs[p, 1], out, p)
    return out


@nb.njit(cache=True, parallel=True)
def _pair_counts_parallel(a, b, c, pairs):
    out = np.empty((pairs.shape[0], 3), np.int64)
    for p in nb.prange(pairs.shape[0]):
        _count_pair(a, b, c, pairs[p, 0], pairs[p, 1], out, p)
    return out


# Below this many word operations a parallel launch costs more than it saves, and idle
# worker threads spinning after it would steal cores from torch during training.
PARALLEL_MIN_WORK = 1 << 16


def _pair_counts(a, b, c, pairs):
    if len(pairs) * a.shape[1] < PARALLEL_MIN_WORK:
        return _pair_counts_serial(a, b, c, pairs)
    return _pair_counts_parallel(a, b, c, pairs)


@nb.njit(cache=True)
def _te_from_counts(n, target, source, pair, pairs):
    """TE in bits per pair from the additive counts (see TripleCounts).

    TE = H(a,b) - H(b) - H(a,b,c) + H(b,c); with plug-in entropies
    H = log2 N - (1/N) sum k log2 k, so TE = (1/N) [S(abc) - S(ab) - S(bc) + S(b)]
    where S sums k log2 k over the cells of that joint count.  k log2 k comes from a
    table over 0..N: no logarithm per pair.
    """
    out = np.zeros(pairs.shape[0], np.float64)
    if n == 0:
        return out
    klogk = np.zeros(n + 1, np.float64)
    for k in range(2, n + 1):
        klogk[k] = k * np.log2(k)
    # target side: S(b) - S(ab), shared by every pair of a target
    target_part = np.empty(target.shape[0], np.float64)
    for j in range(target.shape[0]):
        a, b, ab = target[j, 0], target[j, 1], target[j, 2]
        target_part[j] = (klogk[b] + klogk[n - b]) - (
            klogk[ab] + klogk[a - ab] + klogk[b - ab] + klogk[n - a - b + ab]
        )
    for p in range(pairs.shape[0]):
        i = pairs[p, 0]
        j = pairs[p, 1]
        a, b, ab = target[j, 0], target[j, 1], target[j, 2]
        c = source[i]
        ac, bc, abc = pair[p, 0], pair[p, 1], pair[p, 2]
        s_abc = (
            klogk[abc]
            + klogk[ab - abc]
            + klogk[ac - abc]
            + klogk[bc - abc]
            + klogk[a - ab - ac + abc]
            + klogk[b - ab - bc + abc]
            + klogk[c - ac - bc + abc]
            + klogk[n - a - b - c + ab + ac + bc - abc]
        )
        s_bc = klogk[bc] + klogk[b - bc] + klogk[c - bc] + klogk[n - b - c + bc]
        out[p] = (s_abc - s_bc + target_part[j]) / n
    return out


class TripleCounts(NamedTuple):
    """Additive counts over a set of aligned triples (a, b, c).

    n: number of triples; target: (n_tgt, 3) #a, #b, #(a&b); source: (n_src,) #c;
    pair: (P, 3) #(a&c), #(b&c), #(a&b&c) for the pairs they were counted for.
    Two TripleCounts over disjoint triples add field by field.
    """

    n: int
    target: np.ndarray
    source: np.ndarray
    pair: np.ndarray


def history(delay: int) -> int:
    """Samples consumed before the first triple: h = max(1, delay)."""
    return max(1, delay)


def count_triples_unchecked(sources, targets, pairs, delay):
    """TripleCounts of validated uint8 (n, T) series; the hot path of the feedback."""
    h = history(delay)
    n = targets.shape[1] - h
    a = _pack(targets, h, n)
    b = _pack(targets, h - 1, n)
    c = _pack(sources, h - delay, n)
    return TripleCounts(n, _row_counts(a, b), _row_popcounts(c), _pair_counts(a, b, c, pairs))


def te_from_counts(counts: TripleCounts, pairs: np.ndarray) -> np.ndarray:
    """TE (bits) per pair from counts taken over the same pairs."""
    return _te_from_counts(counts.n, counts.target, counts.source, counts.pair, pairs)


def as_binary(series, name: str, ndim: int) -> np.ndarray:
    """Validate a binary array of the given ndim; return it as contiguous uint8."""
    arr = np.asarray(series)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr).view(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be binary (bool or 0/1 integers), got dtype {arr.dtype}")
    small = np.ascontiguousarray(arr, dtype=np.uint8)
    # uint8 wraps 256 to 0 and -1 to 255: equal to the input and <= 1 means exactly 0/1.
    if small.size and ((small > 1).any() or not np.array_equal(small, arr)):
        raise ValueError(f"{name} must be binary (0/1), found values outside {{0, 1}}")
    return small


def check_delay(delay, length: int) -> int:
    if isinstance(delay, bool) or not isinstance(delay, (int, np.integer)):
        raise ValueError(f"delay must be an integer >= 0, got {delay!r}")
    if delay < 0:
        raise ValueError(f"delay must be >= 0, got {delay}")
    if length <= history(delay):
        raise ValueError(
            f"series of length {length} too short for delay {delay}: "
            f"need more than {history(delay)} samples"
        )
    return int(delay)


def check_pairs(pairs, n_sources: int, n_targets: int) -> np.ndarray:
    arr = np.asarray(pairs)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"pairs must have shape (P, 2), got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"pairs must be integer (source, target) indices, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size:
        if arr[:, 0].min() < 0 or arr[:, 0].max() >= n_sources:
            raise ValueError(f"pairs source index out of range [0, {n_sources})")
        if arr[:, 1].min() < 0 or arr[:, 1].max() >= n_targets:
            raise ValueError(f"pairs target index out of range [0, {n_targets})")
    return arr


def all_pairs(n_sources: int, n_targets: int) -> np.ndarray:
    """Every (source, target) pair, target-major: row j * n_sources + i is (i, j)."""
    src, tgt = np.meshgrid(np.arange(n_sources), np.arange(n_targets))
    return np.stack([src.ravel(), tgt.ravel()], axis=1).astype(np.int64)


def transfer_entropy_pairs(sources, targets, pairs=None, delay: int = 1) -> np.ndarray:
    """TE(source i -> target j) in bits for many pairs of binary series.

    sources: (n_src, T), targets: (n_tgt, T), binary.  With `pairs` a (P, 2) array
    of (source index, target index) rows, returns the (P,) TE of each pair; with
    pairs=None, the full (n_tgt, n_src) matrix M[j, i] = TE(source i -> target j).
    """
    src = as_binary(sources, "sources", 2)
    tgt = as_binary(targets, "targets", 2)
    if src.shape[1] != tgt.shape[1]:
        raise ValueError(
            f"sources and targets must have the same length, got {src.shape[1]} and {tgt.shape[1]}"
        )
    delay = check_delay(delay, src.shape[1])
    if pairs is None:
        grid = all_pairs(src.shape[0], tgt.shape[0])
        te = te_from_counts(count_triples_unchecked(src, tgt, grid, delay), grid)
        return te.reshape(tgt.shape[0], src.shape[0])
    checked = check_pairs(pairs, src.shape[0], tgt.shape[0])
    return te_from_counts(count_triples_unchecked(src, tgt, checked, delay), checked)


def transfer_entropy(source, target, delay: int = 1) -> float:
    """TE(source -> target) in bits for two 1-D binary series of equal length."""
    src = as_binary(source, "source", 1)
    tgt = as_binary(target, "target", 1)
    if src.shape[0] != tgt.shape[0]:
        raise ValueError(
            f"source and target must have the same length, got {src.shape[0]} and {tgt.shape[0]}"
        )
    return float(transfer_entropy_pairs(src[None, :], tgt[None, :], np.zeros((1, 2), np.int64), delay)[0])
