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
O((n_src + n_tgt) * N / 64).  One kernel call does all of it, from the raw arrays:

1. It packs them into uint64 words (`tecli.te.packing.pack_rows`) in one pass that
   also checks that every value is 0 or 1.  Bool and every integer width are read in
   place (as bytes, seen as unsigned integers of their width), with no converted copy;
   the parallel kernel packs in parallel too.
2. The a, b and c streams are bit slices of those words at offsets h, h-1 and h-d.
3. The per-pair popcounts go straight to TE, without counts written to memory.  For
   the full matrix the kernel goes target by target with the sources in SIMD lanes
   (c stored word-major), so the accumulators of all sources of a target are vectors
   and no pair needs a horizontal sum; for a list of pairs it goes pair by pair.

Counts are additive over disjoint sets of triples, which is what
`tecli.te.window.SlidingPairTE` uses to slide a window over a stream of mini-batches:
`replace_counts` counts a new block into the ring slot of the oldest and moves the
window's totals by the difference, in one pass.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numba as nb
import numpy as np
from numba import types
from numba.extending import intrinsic

from tecli.te.packing import as_bytes, binary_view, not_binary, pack_rows, pack_thresholded

_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_WORD = np.uint64(64)

# Below this many word operations a parallel launch costs more than it saves, and idle
# worker threads spinning after it would steal cores from torch during training.  A
# kernel's work is pairs x (words per series, plus TE_WORK when it computes TE).
PARALLEL_MIN_WORK = 1 << 16
TE_WORK = 6  # a pair's TE from its counts costs about as much as 6 word operations


@intrinsic
def _popcount(typingctx, word):
    """Hardware popcount (LLVM ctpop) of a uint64, as an int64 (to add to counts)."""
    sig = types.int64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@nb.njit(inline="always")
def _block(n, n_blocks, k):
    """Bounds of the k-th of n_blocks near-equal contiguous blocks of range(n)."""
    return k * n // n_blocks, (k + 1) * n // n_blocks


# ---------------------------------------------------------------- streams


@nb.njit(inline="always")
def _bit_slice(words, row, start, length, out, out_row):
    """out[out_row] = bits start .. start+length-1 (length >= 1) of words[row], moved down
    to bit 0.  Rows go by index (a row view would cost a reference count each), and
    indices are unsigned (no negative-index check).

    Word w takes its high bits from word w+1 of the source; that word exists for all
    but the last output word.  A shift by 0 copies (a shift by 64 would be undefined).
    """
    row, out_row = np.uint64(row), np.uint64(out_row)
    first = np.uint64(start // 64)
    shift = np.uint64(start % 64)
    last = np.uint64(out.shape[1] - 1)
    if shift:
        for w in range(last):
            out[out_row, w] = (words[row, first + w] >> shift) | (words[row, first + w + _ONE] << (_WORD - shift))
    else:
        for w in range(last):
            out[out_row, w] = words[row, first + w]
    word = words[row, first + last] >> shift
    if shift and first + last + _ONE < np.uint64(words.shape[1]):
        word |= words[row, first + last + _ONE] << (_WORD - shift)
    if length % 64:
        word &= (_ONE << np.uint64(length % 64)) - _ONE
    out[out_row, last] = word


@nb.njit(inline="always")
def _ones(words, row):
    total = 0
    for w in range(words.shape[1]):
        total += _popcount(words[row, w])
    return total


@nb.njit(inline="always")
def _target_words(y, j, h, n, a, b, ab, k):
    """a[k], b[k], ab[k] = the a, b and a&b streams of target j; returns #a, #b, #(a&b)."""
    _bit_slice(y, j, h, n, a, k)
    _bit_slice(y, j, h - 1, n, b, k)
    for w in range(a.shape[1]):
        ab[k, w] = a[k, w] & b[k, w]
    return _ones(a, k), _ones(b, k), _ones(ab, k)


@nb.njit(inline="always")
def _source_slices(x, start, n, c, source, lo, hi):
    """The c streams of packed sources lo..hi-1 (bits start .. start+n-1) into c, #c into source."""
    for i in range(lo, hi):
        _bit_slice(x, i, start, n, c, i)
        source[i] = _ones(c, i)


@nb.njit(cache=True)
def _source_streams(src, size, x, start, n, c, source, lo, hi):
    """Sources lo..hi-1 (raw bytes as for `pack_rows`): packed into x, their c streams
    (bits start .. start+n-1) into c and #c into source.  Returns nonzero if one of
    their values is not 0 or 1."""
    bad = pack_rows(src, size, x, lo, hi)
    _source_slices(x, start, n, c, source, lo, hi)
    return bad


# ---------------------------------------------------------------- TE from counts

_klogk = np.zeros(2)  # k log2 k for k = 0 .. len-1; grown, never recomputed


def klogk_table(n: int) -> np.ndarray:
    """The k log2 k table covering k = 0 .. n (module-level, grown when needed)."""
    global _klogk
    table = _klogk
    if len(table) <= n:
        k = np.arange(len(table), max(n + 1, 2 * len(table)), dtype=np.float64)
        table = _klogk = np.concatenate([table, k * np.log2(k)])
    return table


@nb.njit(inline="always")
def _target_part(n, a, b, ab, klogk):
    """S(b) - S(ab): the part of the TE of every pair of a target that it fixes alone."""
    n, a, b, ab = np.uint64(n), np.uint64(a), np.uint64(b), np.uint64(ab)
    return (klogk[b] + klogk[n - b]) - (klogk[ab] + klogk[a - ab] + klogk[b - ab] + klogk[n - a - b + ab])


@nb.njit(inline="always")
def _te(n, a, b, ab, target_part, c, ac, bc, abc, klogk):
    """TE in bits of one pair from its counts.

    TE = H(a,b) - H(b) - H(a,b,c) + H(b,c); with plug-in entropies
    H = log2 N - (1/N) sum k log2 k, so TE = (1/N) [S(abc) - S(ab) - S(bc) + S(b)]
    where S sums k log2 k over the cells of that joint count.  k log2 k comes from a
    table over 0..N: no logarithm per pair, and 1/N is hoisted out of pair loops.  The
    cell counts are computed as uint64 (exact: every cell is >= 0), which spares each
    lookup a negative-index check.
    """
    n, a, b, ab = np.uint64(n), np.uint64(a), np.uint64(b), np.uint64(ab)
    c, ac, bc, abc = np.uint64(c), np.uint64(ac), np.uint64(bc), np.uint64(abc)
    # Each (b, c) cell's count m and its a = 1 count k (its a = 0 count is m - k): fewer
    # integer operations than each cell's inclusion-exclusion (12 % off the TE part),
    # the same sums in the same order (the same bits).
    m11, k11 = bc, abc
    m10, k10 = b - bc, ab - abc
    m01, k01 = c - bc, ac - abc
    m00, k00 = n - b - m01, a - ab - k01
    s_abc = (
        klogk[k11]
        + klogk[k10]
        + klogk[k01]
        + klogk[m11 - k11]
        + klogk[k00]
        + klogk[m10 - k10]
        + klogk[m01 - k01]
        + klogk[m00 - k00]
    )
    s_bc = klogk[m11] + klogk[m10] + klogk[m01] + klogk[m00]
    return (s_abc - s_bc + target_part) * (1.0 / n)


@nb.njit(cache=True)
def _te_range(n, target, source, pair, pairs, parts, klogk, lo, hi, out):
    """TE of pairs lo..hi-1 from their counts into out, given the targets' parts."""
    for q in range(lo, hi):
        p = np.uint64(q)  # unsigned indices: no negative-index checks (1.5x)
        i, j = np.uint64(pairs[p, 0]), np.uint64(pairs[p, 1])
        out[p] = _te(n, target[j, 0], target[j, 1], target[j, 2], parts[j],
                     source[i], pair[p, 0], pair[p, 1], pair[p, 2], klogk)  # fmt: skip


@nb.njit(cache=True)
def _target_parts(n, target, klogk):
    parts = np.empty(target.shape[0], np.float64)
    for j in range(target.shape[0]):
        parts[j] = _target_part(n, target[j, 0], target[j, 1], target[j, 2], klogk)
    return parts


@nb.njit(cache=True)
def _te_from_counts(n, target, source, pair, pairs, klogk, out):
    if n == 0:
        out[:] = 0.0
        return out
    _te_range(n, target, source, pair, pairs, _target_parts(n, target, klogk), klogk, 0, pairs.shape[0], out)
    return out


@nb.njit(inline="always")
def _dense_rows(lo, hi, n_src):
    """The targets j whose row of dense pairs (p = j * n_src + i) meets pairs lo..hi-1
    (none without sources)."""
    if n_src == 0:
        return 0, 0
    return lo // n_src, (hi + n_src - 1) // n_src


@nb.njit(inline="always")
def _dense_span(lo, hi, n_src, j):
    """The sources i of target j's row of dense pairs that fall in pairs lo..hi-1."""
    row = j * n_src
    return max(lo - row, 0), min(hi - row, n_src)


@nb.njit(cache=True)
def _te_dense_range(n, target, source, pair, parts, klogk, lo, hi, out):
    """`_te_range` of pairs lo..hi-1 when the pairs are every pair in the order
    p = j * n_src + i: a target's counts are read once for its row, and no pair index
    is read (36 against 50 us for 120 x 84 pairs)."""
    n_src = source.shape[0]
    first, end = _dense_rows(lo, hi, n_src)
    for j in range(first, end):
        a, b, ab, part = target[j, 0], target[j, 1], target[j, 2], parts[j]
        row = j * n_src
        i_lo, i_hi = _dense_span(lo, hi, n_src, j)
        for k in range(i_lo, i_hi):
            i, p = np.uint64(k), np.uint64(row + k)  # unsigned indices: no negative-index checks (1.5x)
            out[p] = _te(n, a, b, ab, part, source[i], pair[p, 0], pair[p, 1], pair[p, 2], klogk)


# ---------------------------------------------------------------- the full matrix


@nb.njit(cache=True)
def _matrix_arrays(n_src, n_tgt, length, delay):
    """x and y (packed series), c_words (the c streams, word-major: (W, n_src)), the #c
    per source and the output matrix."""
    n_words = (length - max(1, delay) + 63) // 64
    series_words = (length + 63) // 64
    return (np.empty((n_src, series_words), np.uint64), np.empty((n_tgt, series_words), np.uint64),
            np.empty((n_words, n_src), np.uint64), np.empty(n_src, np.int64),
            np.empty((n_tgt, n_src), np.float64))  # fmt: skip


@nb.njit(cache=True)
def _matrix_rows(tgt, size, y, delay, c_words, source, klogk, lo, hi, out):
    """out[j, :] = TE(every source -> target j) for targets lo..hi-1, packed here into y;
    returns nonzero if one of their values is not 0 or 1.

    c_words is (W, n_src): the inner loop runs over sources, each in a SIMD lane,
    so its accumulators vectorize and no pair needs a horizontal sum.
    """
    bad = pack_rows(tgt, size, y, lo, hi)
    h = max(1, delay)
    n = tgt.shape[1] // size - h
    n_src = c_words.shape[1]
    a = np.empty((1, c_words.shape[0]), np.uint64)
    b = np.empty_like(a)
    ab = np.empty_like(a)
    acc_ac = np.empty(n_src, np.int64)
    acc_bc = np.empty(n_src, np.int64)
    acc_abc = np.empty(n_src, np.int64)
    for j in range(lo, hi):
        n_a, n_b, n_ab = _target_words(y, j, h, n, a, b, ab, 0)
        part = _target_part(n, n_a, n_b, n_ab, klogk)
        acc_ac[:] = 0
        acc_bc[:] = 0
        acc_abc[:] = 0
        n_words = c_words.shape[0]
        for w in range(0, n_words - 3, 4):  # 4 words a pass: a quarter of the accumulator loads and stores
            a0, a1, a2, a3 = a[0, w], a[0, w + 1], a[0, w + 2], a[0, w + 3]
            b0, b1, b2, b3 = b[0, w], b[0, w + 1], b[0, w + 2], b[0, w + 3]
            ab0, ab1, ab2, ab3 = ab[0, w], ab[0, w + 1], ab[0, w + 2], ab[0, w + 3]
            for i in range(n_src):
                c0, c1, c2, c3 = c_words[w, i], c_words[w + 1, i], c_words[w + 2, i], c_words[w + 3, i]
                acc_ac[i] += _popcount(a0 & c0) + _popcount(a1 & c1) + _popcount(a2 & c2) + _popcount(a3 & c3)
                acc_bc[i] += _popcount(b0 & c0) + _popcount(b1 & c1) + _popcount(b2 & c2) + _popcount(b3 & c3)
                acc_abc[i] += _popcount(ab0 & c0) + _popcount(ab1 & c1) + _popcount(ab2 & c2) + _popcount(ab3 & c3)
        for w in range(n_words - n_words % 4, n_words):
            aw, bw, abw = a[0, w], b[0, w], ab[0, w]
            for i in range(n_src):
                cw = c_words[w, i]
                acc_ac[i] += _popcount(aw & cw)
                acc_bc[i] += _popcount(bw & cw)
                acc_abc[i] += _popcount(abw & cw)
        for i in range(n_src):
            out[j, i] = _te(n, n_a, n_b, n_ab, part, source[i], acc_ac[i], acc_bc[i], acc_abc[i], klogk)
    return bad


# Every kernel comes as a serial and a parallel function with their own bodies, the same
# but for range / prange: Numba's on-disk cache keys on the function's bytecode and
# signature, not on `parallel`, so one body compiled twice would share (and mix up) a
# single cache entry.  The serial one is called with n_blocks = 1.  The kernels take the
# raw (n, T) arrays, as their bytes and the size of an element (see `pack_rows`), and
# return, last, whether the sources and the targets held a value other than 0 or 1 (their
# other results are then meaningless).  The matrix kernels pack each block of targets in
# its row loop, after the pairs of earlier targets: a bad target still yields counts
# within 0..N (they count bits of masked streams), so only numbers that are not returned.
@nb.njit(cache=True)
def _matrix_serial(src, src_size, tgt, tgt_size, delay, klogk, n_blocks):
    length = src.shape[1] // src_size
    x, y, c_words, source, out = _matrix_arrays(src.shape[0], tgt.shape[0], length, delay)
    h = max(1, delay)
    bad_src = 0
    for k in range(n_blocks):
        lo, hi = _block(src.shape[0], n_blocks, k)
        bad_src += _source_streams(src, src_size, x, h - delay, length - h, c_words.T, source, lo, hi) != _ZERO
    if bad_src:
        return out, True, False
    bad_tgt = 0
    for k in range(n_blocks):
        lo, hi = _block(tgt.shape[0], n_blocks, k)
        bad_tgt += _matrix_rows(tgt, tgt_size, y, delay, c_words, source, klogk, lo, hi, out) != _ZERO
    return out, False, bad_tgt > 0


@nb.njit(cache=True, parallel=True)
def _matrix_parallel(src, src_size, tgt, tgt_size, delay, klogk, n_blocks):
    length = src.shape[1] // src_size
    x, y, c_words, source, out = _matrix_arrays(src.shape[0], tgt.shape[0], length, delay)
    h = max(1, delay)
    bad_src = 0
    for k in nb.prange(n_blocks):
        lo, hi = _block(src.shape[0], n_blocks, k)
        bad_src += _source_streams(src, src_size, x, h - delay, length - h, c_words.T, source, lo, hi) != _ZERO
    if bad_src:
        return out, True, False
    bad_tgt = 0
    for k in nb.prange(n_blocks):
        lo, hi = _block(tgt.shape[0], n_blocks, k)
        bad_tgt += _matrix_rows(tgt, tgt_size, y, delay, c_words, source, klogk, lo, hi, out) != _ZERO
    return out, False, bad_tgt > 0


# ---------------------------------------------------------------- a list of pairs


@nb.njit(cache=True)
def _pairs_arrays(n_src, n_tgt, length, delay):
    """x, y (packed series), c (n_src, W), #c, a, b, ab (n_tgt, W), #a #b #(a&b) and
    the target parts of TE."""
    n_words = (length - max(1, delay) + 63) // 64
    series_words = (length + 63) // 64
    return (np.empty((n_src, series_words), np.uint64), np.empty((n_tgt, series_words), np.uint64),
            np.empty((n_src, n_words), np.uint64), np.empty(n_src, np.int64),
            np.empty((n_tgt, n_words), np.uint64), np.empty((n_tgt, n_words), np.uint64),
            np.empty((n_tgt, n_words), np.uint64), np.empty((n_tgt, 3), np.int64),
            np.empty(n_tgt, np.float64))  # fmt: skip


@nb.njit(inline="always")
def _target_slices(y, h, n, klogk, a, b, ab, target, parts, lo, hi):
    """The a, b, ab streams of packed targets lo..hi-1, their counts into target and their
    parts of TE into parts."""
    for j in range(lo, hi):
        n_a, n_b, n_ab = _target_words(y, j, h, n, a, b, ab, j)
        target[j, 0], target[j, 1], target[j, 2] = n_a, n_b, n_ab
        parts[j] = _target_part(n, n_a, n_b, n_ab, klogk)


@nb.njit(cache=True)
def _target_streams(tgt, size, y, h, n, klogk, a, b, ab, target, parts, lo, hi):
    """Targets lo..hi-1 (raw bytes as for `pack_rows`): packed into y, their streams
    into a, b, ab, their counts into target and their parts of TE into parts.  Returns
    nonzero if one of their values is not 0 or 1."""
    bad = pack_rows(tgt, size, y, lo, hi)
    _target_slices(y, h, n, klogk, a, b, ab, target, parts, lo, hi)
    return bad


@nb.njit(inline="always")
def _pair_counts(a, b, ab, c, i, j):
    """#(a&c), #(b&c), #(a&b&c) of source i and target j (unsigned indices: no
    negative-index checks in the word loop)."""
    i, j = np.uint64(i), np.uint64(j)
    if c.shape[1] == 1:  # a block of at most 64 samples (a mini-batch): the word loop's set-up would cost more than its word
        cw = c[i, 0]
        return _popcount(a[j, 0] & cw), _popcount(b[j, 0] & cw), _popcount(ab[j, 0] & cw)
    ac = 0
    bc = 0
    abc = 0
    for w in range(np.uint64(c.shape[1])):
        cw = c[i, w]
        ac += _popcount(a[j, w] & cw)
        bc += _popcount(b[j, w] & cw)
        abc += _popcount(ab[j, w] & cw)
    return ac, bc, abc


@nb.njit(cache=True)
def _pair_range(n, a, b, ab, target, parts, c, source, pairs, klogk, lo, hi, te):
    """The TE of pairs lo..hi-1 into te."""
    for q in range(lo, hi):
        p = np.uint64(q)  # unsigned indices: no negative-index checks
        i, j = np.uint64(pairs[p, 0]), np.uint64(pairs[p, 1])
        ac, bc, abc = _pair_counts(a, b, ab, c, i, j)
        te[p] = _te(n, target[j, 0], target[j, 1], target[j, 2], parts[j], source[i], ac, bc, abc, klogk)


@nb.njit(cache=True)
def _pairs_serial(src, src_size, tgt, tgt_size, delay, pairs, klogk, te, n_blocks):
    """TE of the pairs into te."""
    length = src.shape[1] // src_size
    x, y, c, source, a, b, ab, target, parts = _pairs_arrays(src.shape[0], tgt.shape[0], length, delay)
    h = max(1, delay)
    n = length - h
    bad_src = 0
    bad_tgt = 0
    for k in range(n_blocks):
        lo, hi = _block(src.shape[0], n_blocks, k)
        bad_src += _source_streams(src, src_size, x, h - delay, n, c, source, lo, hi) != _ZERO
        lo, hi = _block(tgt.shape[0], n_blocks, k)
        bad_tgt += _target_streams(tgt, tgt_size, y, h, n, klogk, a, b, ab, target, parts, lo, hi) != _ZERO
    if bad_src or bad_tgt:
        return bad_src > 0, bad_tgt > 0
    for k in range(n_blocks):
        lo, hi = _block(pairs.shape[0], n_blocks, k)
        _pair_range(n, a, b, ab, target, parts, c, source, pairs, klogk, lo, hi, te)
    return False, False


@nb.njit(cache=True, parallel=True)
def _pairs_parallel(src, src_size, tgt, tgt_size, delay, pairs, klogk, te, n_blocks):
    length = src.shape[1] // src_size
    x, y, c, source, a, b, ab, target, parts = _pairs_arrays(src.shape[0], tgt.shape[0], length, delay)
    h = max(1, delay)
    n = length - h
    bad_src = 0
    bad_tgt = 0
    for k in nb.prange(n_blocks):
        lo, hi = _block(src.shape[0], n_blocks, k)
        bad_src += _source_streams(src, src_size, x, h - delay, n, c, source, lo, hi) != _ZERO
        lo, hi = _block(tgt.shape[0], n_blocks, k)
        bad_tgt += _target_streams(tgt, tgt_size, y, h, n, klogk, a, b, ab, target, parts, lo, hi) != _ZERO
    if bad_src or bad_tgt:
        return bad_src > 0, bad_tgt > 0
    for k in nb.prange(n_blocks):
        lo, hi = _block(pairs.shape[0], n_blocks, k)
        _pair_range(n, a, b, ab, target, parts, c, source, pairs, klogk, lo, hi, te)
    return False, False


@nb.njit(inline="always")
def _move_totals(target, source, slot_target, slot_source, total_target, total_source):
    """The block's target and source counts into their slot, the totals moved by the difference."""
    for j in range(target.shape[0]):
        for k in range(3):
            total_target[j, k] += target[j, k] - slot_target[j, k]
            slot_target[j, k] = target[j, k]
    for i in range(source.shape[0]):
        total_source[i] += source[i] - slot_source[i]
        slot_source[i] = source[i]


@nb.njit(cache=True)
def _replace_streams(src, src_size, tgt, tgt_size, delay, klogk, slot_target, slot_source, total_target,
                     total_source):  # fmt: skip
    """The replace kernels' first, serial part (O(neurons)) from raw bytes: the block's
    streams, and the targets' and sources' counts into their slots, the totals moved by
    the difference.  Returns (a, b, ab, c, #c summed, #a summed, flags)."""
    length = src.shape[1] // src_size
    x, y, c, source, a, b, ab, target, parts = _pairs_arrays(src.shape[0], tgt.shape[0], length, delay)
    h = max(1, delay)
    n = length - h
    bad_src = _source_streams(src, src_size, x, h - delay, n, c, source, 0, src.shape[0]) != _ZERO
    bad_tgt = _target_streams(tgt, tgt_size, y, h, n, klogk, a, b, ab, target, parts, 0, tgt.shape[0]) != _ZERO
    if not (bad_src or bad_tgt):
        _move_totals(target, source, slot_target, slot_source, total_target, total_source)
    return a, b, ab, c, source.sum(), target[:, 0].sum(), bad_src, bad_tgt


@nb.njit(cache=True)
def _thresholded_streams(src_values, src_threshold, src_carry, tgt_values, tgt_threshold, tgt_carry, delay, klogk,
                         slot_target, slot_source, total_target, total_source):  # fmt: skip
    """`_replace_streams` for a block given as activations and thresholds after carried
    samples (see packing.pack_thresholded), whose carries it moves on."""
    length = src_carry.shape[1] + src_values.shape[0]
    x, y, c, source, a, b, ab, target, parts = _pairs_arrays(src_values.shape[1], tgt_values.shape[1], length, delay)
    h = max(1, delay)
    n = length - h
    pack_thresholded(src_carry, src_values, src_threshold, x, 0, x.shape[0])
    pack_thresholded(tgt_carry, tgt_values, tgt_threshold, y, 0, y.shape[0])
    _source_slices(x, h - delay, n, c, source, 0, x.shape[0])
    _target_slices(y, h, n, klogk, a, b, ab, target, parts, 0, y.shape[0])
    _move_totals(target, source, slot_target, slot_source, total_target, total_source)
    return a, b, ab, c, source.sum(), target[:, 0].sum()


@nb.njit(inline="always")
def _replace_pair(slot_pair, total_pair, p, ac, bc, abc):
    """Pair p's new block counts into its slot, its totals moved by the difference."""
    total_pair[p, 0] += ac - slot_pair[p, 0]
    total_pair[p, 1] += bc - slot_pair[p, 1]
    total_pair[p, 2] += abc - slot_pair[p, 2]
    slot_pair[p, 0], slot_pair[p, 1], slot_pair[p, 2] = ac, bc, abc


@nb.njit(cache=True)
def _replace_pair_counts(a, b, ab, c, pairs, slot_pair, total_pair, lo, hi):
    """The pairs' loop of the replace kernels over pairs lo..hi-1, a function of its own:
    in a kernel's body its loop kept its strides on the stack, twice as slow."""
    for q in range(lo, hi):
        p = np.uint64(q)  # unsigned indices: no negative-index checks
        ac, bc, abc = _pair_counts(a, b, ab, c, pairs[p, 0], pairs[p, 1])
        _replace_pair(slot_pair, total_pair, p, ac, bc, abc)


@nb.njit(cache=True)
def _replace_dense_counts(a, b, ab, c, slot_pair, total_pair, lo, hi):
    """`_replace_pair_counts` when the pairs are every pair in the order p = j * n_src + i:
    no pair index is read (28.5 against 35.8 us for 120 x 84 pairs of a 64-sample block)."""
    n_src = c.shape[0]
    first, end = _dense_rows(lo, hi, n_src)
    for j in range(first, end):
        i_lo, i_hi = _dense_span(lo, hi, n_src, j)
        for i in range(i_lo, i_hi):
            ac, bc, abc = _pair_counts(a, b, ab, c, i, j)
            _replace_pair(slot_pair, total_pair, np.uint64(j * n_src + i), ac, bc, abc)


@nb.njit(inline="always")
def _pair_block(a, b, ab, c, pairs, slot_pair, total_pair, n_total, total_target, total_source, parts, klogk, te,
                dense, lo, hi):  # fmt: skip
    """Pairs lo..hi-1: their counts into their slot, the totals moved; with te not empty,
    then their TE over the totals (n_total > 0: the block just counted is in it; a second
    loop: in the first it cost more), dense: the pairs are every pair in the order of
    `_te_dense_range`."""
    if dense:
        _replace_dense_counts(a, b, ab, c, slot_pair, total_pair, lo, hi)
    else:
        _replace_pair_counts(a, b, ab, c, pairs, slot_pair, total_pair, lo, hi)
    if te.shape[0] and dense:
        _te_dense_range(n_total, total_target, total_source, total_pair, parts, klogk, lo, hi, te)
    elif te.shape[0]:
        _te_range(n_total, total_target, total_source, total_pair, pairs, parts, klogk, lo, hi, te)


@nb.njit(cache=True)
def _pair_phase(a, b, ab, c, pairs, slot_pair, total_pair, n_total, total_target, total_source, klogk, te, dense):
    """`_pair_block` of every pair."""
    parts = _target_parts(n_total, total_target, klogk)
    _pair_block(a, b, ab, c, pairs, slot_pair, total_pair, n_total, total_target, total_source, parts, klogk, te,
                dense, 0, pairs.shape[0])  # fmt: skip


@nb.njit(cache=True, parallel=True)
def _pair_phase_parallel(a, b, ab, c, pairs, slot_pair, total_pair, n_total, total_target, total_source, klogk, te,
                         n_blocks, dense):  # fmt: skip
    """`_pair_phase` with the pairs in n_blocks blocks on Numba's threads."""
    parts = _target_parts(n_total, total_target, klogk)
    for k in nb.prange(n_blocks):
        lo, hi = _block(pairs.shape[0], n_blocks, k)
        _pair_block(a, b, ab, c, pairs, slot_pair, total_pair, n_total, total_target, total_source, parts, klogk, te,
                    dense, lo, hi)  # fmt: skip


@nb.njit(inline="always")
def _pairs(a, b, ab, c, pairs, slot_pair, total_pair, n_total, total_target, total_source, klogk, te, n_blocks, dense):
    if n_blocks > 1:
        _pair_phase_parallel(a, b, ab, c, pairs, slot_pair, total_pair, n_total, total_target, total_source, klogk, te,
                             n_blocks, dense)  # fmt: skip
    else:
        _pair_phase(a, b, ab, c, pairs, slot_pair, total_pair, n_total, total_target, total_source, klogk, te, dense)


@nb.njit(inline="always")
def _next_slot(ring_n, position, n):
    """The ring slot a block of n triples replaces, and the window's triples once it has."""
    s = position[0]
    return s, position[1] - ring_n[s] + n


@nb.njit(inline="always")
def _advance(ring_n, position, counted, n, n_total, source_ones, target_ones):
    """After a block of n triples replaced the counts in ring slot position[0]: its n kept
    there, the ring at its next slot, n_total triples in the totals, the block's triples and
    ones counted (see CountRing)."""
    s = position[0]
    ring_n[s] = n
    position[0] = (s + 1) % ring_n.shape[0]
    position[1] = n_total
    counted[0] += n
    counted[1] += source_ones
    counted[2] += target_ones


@nb.njit(cache=True)
def _pairs_replace(src, src_size, tgt, tgt_size, delay, pairs, klogk, ring_n, ring_target, ring_source, ring_pair,
                   total_target, total_source, total_pair, position, counted, te, n_blocks, dense):  # fmt: skip
    """Count the triples into the ring slot at position[0], whose counts they replace, and
    move the totals by the difference, in one pass with no counts array; with te not
    empty, then the pairs' TE over the totals; the pairs in n_blocks blocks on Numba's
    threads when n_blocks > 1 (see `_pair_block` for dense); then the ring advanced
    (`_advance`). Returns the flags (nothing is counted when one is set)."""
    n = src.shape[1] // src_size - max(1, delay)
    s, n_total = _next_slot(ring_n, position, n)
    a, b, ab, c, source_ones, target_ones, bad_src, bad_tgt = _replace_streams(
        src, src_size, tgt, tgt_size, delay, klogk, ring_target[s], ring_source[s], total_target, total_source)
    if bad_src or bad_tgt:
        return bad_src, bad_tgt
    _pairs(a, b, ab, c, pairs, ring_pair[s], total_pair, n_total, total_target, total_source, klogk, te, n_blocks, dense)
    _advance(ring_n, position, counted, n, n_total, source_ones, target_ones)
    return False, False


@nb.njit(inline="always")
def _thresholded_fits(src_values, src_carry, tgt_values, tgt_carry, delay, pairs, klogk, ring_n, ring_target,
                      ring_source, position, te):  # fmt: skip
    """The block fits the ring: rows of the ring's widths, as many of sources as of targets
    and at least h = history(delay), carries of h samples each (fewer: a new stream),
    `te` empty or one per pair, and the k log2 k table past the window's triples."""
    h = max(1, delay)
    n = src_values.shape[0]
    n_src, n_tgt = ring_source.shape[1], ring_target.shape[1]
    return (
        n >= h and tgt_values.shape[0] == n and src_values.shape[1] == n_src and tgt_values.shape[1] == n_tgt
        and src_carry.shape[0] == n_src and src_carry.shape[1] == h
        and tgt_carry.shape[0] == n_tgt and tgt_carry.shape[1] == h
        and (te.shape[0] == 0 or te.shape[0] == pairs.shape[0])
        and klogk.shape[0] > position[1] - ring_n[position[0]] + n
    )  # fmt: skip


# The thresholded kernel's only types (see _compile_thresholded): activations float32 rows,
# thresholds as Python floats, the window's uint8 carries, int32 pairs and counts.
THRESHOLDED_SIGNATURE = (
    "boolean(float32[:, ::1], float64, uint8[:, ::1], float32[:, ::1], float64, uint8[:, ::1], int64, int32[:, ::1], "
    "float64[::1], int64[::1], int32[:, :, ::1], int32[:, ::1], int32[:, :, ::1], int32[:, ::1], int32[::1], "
    "int32[:, ::1], int64[::1], int64[::1], float64[::1], int64, boolean)"
)


@nb.njit(cache=True)
def _thresholded_replace(src_values, src_threshold, src_carry, tgt_values, tgt_threshold, tgt_carry, delay, pairs,
                         klogk, ring_n, ring_target, ring_source, ring_pair, total_target, total_source, total_pair,
                         position, counted, te, n_blocks, dense):  # fmt: skip
    """`_pairs_replace` of a block given as activations and thresholds (its values are
    binary by construction), compared in float32; False, with nothing touched, when the
    block does not fit (`_thresholded_fits`)."""
    if not _thresholded_fits(src_values, src_carry, tgt_values, tgt_carry, delay, pairs, klogk, ring_n, ring_target,
                             ring_source, position, te):  # fmt: skip
        return False
    n = src_values.shape[0]
    s, n_total = _next_slot(ring_n, position, n)
    a, b, ab, c, source_ones, target_ones = _thresholded_streams(
        src_values, np.float32(src_threshold), src_carry, tgt_values, np.float32(tgt_threshold), tgt_carry, delay,
        klogk, ring_target[s], ring_source[s], total_target, total_source)  # fmt: skip
    _pairs(a, b, ab, c, pairs, ring_pair[s], total_pair, n_total, total_target, total_source, klogk, te, n_blocks, dense)
    _advance(ring_n, position, counted, n, n_total, source_ones, target_ones)
    return True


# ---------------------------------------------------------------- the Python side


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


class CountRing(NamedTuple):
    """A sliding window's counts, which the replace kernels read and advance themselves (no
    Python between blocks): the counts of its last k blocks in a ring of slots, n (k,)
    triples and target (k, n_tgt, 3), source (k, n_src), pair (k, P, 3) as in
    TripleCounts; their totals; position = [the slot the next block replaces, triples in
    the totals]; counted = [triples, source ones (c), target ones (a)] over every block
    counted since the ring was made. window.SlidingPairTE owns one."""

    n: np.ndarray
    target: np.ndarray
    source: np.ndarray
    pair: np.ndarray
    total_target: np.ndarray
    total_source: np.ndarray
    total_pair: np.ndarray
    position: np.ndarray
    counted: np.ndarray

    @classmethod
    def empty(cls, k: int, n_sources: int, n_targets: int, n_pairs: int) -> CountRing:
        """k slots of int32 counts (half the memory of int64: a block's are at most its
        samples, a window's at most the training set's), all zero."""
        return cls(np.zeros(k, np.int64), np.zeros((k, n_targets, 3), np.int32), np.zeros((k, n_sources), np.int32),
                   np.zeros((k, n_pairs, 3), np.int32), np.zeros((n_targets, 3), np.int32),
                   np.zeros(n_sources, np.int32), np.zeros((n_pairs, 3), np.int32), np.zeros(2, np.int64),
                   np.zeros(3, np.int64))  # fmt: skip

    def totals(self) -> TripleCounts:
        """The counts over the window's triples (views of the totals)."""
        return TripleCounts(int(self.position[1]), self.total_target, self.total_source, self.total_pair)


def history(delay: int) -> int:
    """Samples consumed before the first triple: h = max(1, delay)."""
    return max(1, delay)


def _check_values(bad_sources: bool, bad_targets: bool, names: tuple[str, str]) -> None:
    """Raise for the first of sources and targets that a kernel found not binary."""
    for bad, name in zip((bad_sources, bad_targets), names):
        if bad:
            raise not_binary(name)


def _n_blocks(work: int) -> int:
    """1 below PARALLEL_MIN_WORK, else a block per thread of Numba's pool (its size: a
    thread count lowered with set_num_threads shares the blocks out; asking for that count
    costs a microsecond a call, and asking inside a kernel keeps it out of the on-disk cache)."""
    return 1 if work < PARALLEL_MIN_WORK else nb.config.NUMBA_NUM_THREADS


def _kernel(serial, parallel, work: int):
    """(kernel, n_blocks): the serial one in one block below PARALLEL_MIN_WORK, else the
    parallel one."""
    n_blocks = _n_blocks(work)
    return (serial if n_blocks == 1 else parallel), n_blocks


def _run_pairs(src, tgt, delay: int, pairs: np.ndarray, te: np.ndarray, names) -> None:
    """The TE of checked pairs of `binary_view`s into te, serial below PARALLEL_MIN_WORK."""
    work = len(pairs) * ((src.shape[1] + 63) // 64 + TE_WORK)
    kernel, n_blocks = _kernel(_pairs_serial, _pairs_parallel, work)
    bad_src, bad_tgt = kernel(*as_bytes(src), *as_bytes(tgt), delay, pairs, klogk_table(src.shape[1]), te, n_blocks)
    _check_values(bad_src, bad_tgt, names)


def replace_counts(src: np.ndarray, tgt: np.ndarray, pairs: np.ndarray, delay: int, ring: CountRing,
                   te: np.ndarray | None = None, parallel: bool = True, dense: bool = False) -> None:  # fmt: skip
    """Count the triples of `binary_view`s sources and targets (T > h samples) for checked
    pairs into the ring's next slot, replacing the block counted there, move the totals
    by the difference and advance the ring: what a sliding window does with a new block,
    without a counts array or a second pass.  With `te` (float64, (P,)), the pairs' TE
    over the moved totals goes there, from the same pass.  With `parallel` the pairs of a
    large block are split over Numba's threads.  `dense` says that the pairs are every
    (source i, target j) in the order p = j * n_sources + i (counted and read without
    pair indices, faster).  Values other than 0 or 1 raise, and leave the ring as it was."""
    n = src.shape[1] - history(delay)
    _check_read(te, pairs, dense, ring)
    bad_src, bad_tgt = _pairs_replace(
        *as_bytes(src), *as_bytes(tgt), delay, pairs, klogk_table(int(ring.position[1]) + n), *ring,
        _NO_TE if te is None else te, replace_blocks(len(pairs), n, te) if parallel else 1, dense,
    )  # fmt: skip
    _check_values(bad_src, bad_tgt, ("sources", "targets"))


def _compile_thresholded(*args) -> bool:
    """The thresholded kernel's first call: compile it for THRESHOLDED_SIGNATURE and no
    other types (loading it from Numba's cache takes about 0.4 s: not at import), then call
    it, as every later call does directly. Arguments of other types then raise TypeError
    in Numba's dispatch, which inspects them anyway, instead of compiling another kernel:
    its caller needs no Python checks of its own."""
    global _thresholded
    with _COMPILING:  # a second thread's compile() would fail once compilation is disabled
        if not _thresholded_replace.signatures:
            _thresholded_replace.compile(THRESHOLDED_SIGNATURE)
            _thresholded_replace.disable_compile()
    _thresholded = _thresholded_replace
    return _thresholded(*args)


_thresholded = _compile_thresholded
_COMPILING = threading.Lock()


def replace_counts_thresholded(sources: np.ndarray, source_threshold: float, source_carry: np.ndarray,
                               targets: np.ndarray, target_threshold: float, target_carry: np.ndarray,
                               pairs: np.ndarray, delay: int, ring: CountRing, klogk: np.ndarray,
                               te: np.ndarray | None, n_blocks: int, dense: bool) -> bool:  # fmt: skip
    """`replace_counts` of the block [carry | values > threshold] per neuron: sources and
    targets are (B, n) float32 activations, sample by sample (a layer's output as torch
    holds it), compared with the threshold in float32 as NumPy compares them; the carries,
    (n, h) uint8 0/1 with h = history(delay) <= B, are the samples before the block, and
    take its last h samples; klogk is a klogk_table, n_blocks the pairs' blocks (see
    replace_blocks).  The training feedback's route for number thresholds: no binary block
    is written, transposed or checked in Python.

    For SlidingPairTE.push_values, which owns the carries, the ring and the pairs (not
    checked here): it is called at every batch, where each Python step runs from cold
    caches between torch's kernels (its checks and argument preparation took about 60 us a
    batch of the 120 x 84 and 84 x 10 windows in training, 3.5 us a call alone), so the
    kernel checks the shapes itself, at no cost. Arrays not of THRESHOLDED_SIGNATURE's types
    (read-only and strided ones included) raise TypeError; number thresholds of other types
    are converted. A block that does not fit (a new stream, a short block, wrong shapes, a
    table too short) returns False and leaves everything as it was."""
    return _thresholded(
        sources, source_threshold, source_carry, targets, target_threshold, target_carry, delay, pairs, klogk, *ring,
        _NO_TE if te is None else te, n_blocks, dense,
    )  # fmt: skip


def replace_blocks(n_pairs: int, n: int, te: np.ndarray | None) -> int:
    """How many blocks the replace kernels split n_pairs pairs of an n-triple block into
    (1: serial), when they may run in parallel."""
    return _n_blocks(_replace_work(n_pairs, n, te))


def _check_read(te: np.ndarray | None, pairs: np.ndarray, dense: bool, ring: CountRing) -> None:
    """The TE out array and the ring fit the pairs, the ring's slot is one of its own, and
    dense pairs are as many as the dense kernel reads (the kernels index without bounds
    checks)."""
    if te is not None:
        check_out(te, len(pairs))
    k, n_src, n_tgt, n_pairs = len(ring.n), ring.source.shape[-1], ring.target.shape[1], len(pairs)
    shapes = ((k,), (k, n_tgt, 3), (k, n_src), (k, n_pairs, 3), (n_tgt, 3), (n_src,), (n_pairs, 3), (2,), (3,))
    if tuple(a.shape for a in ring) != shapes or not 0 <= ring.position[0] < k:
        raise ValueError(f"the count ring must be of shapes {shapes}, its slot in 0..{k - 1}")
    if dense and n_pairs != n_src * n_tgt:
        raise ValueError(f"dense pairs must be all {n_src} x {n_tgt}, got {n_pairs}")


def float_rows(values, n: int, width: int) -> bool:
    """values is a C-contiguous float32 array of shape (n, width)."""
    return (isinstance(values, np.ndarray) and values.dtype == np.float32 and values.shape == (n, width)
            and values.flags.c_contiguous)  # fmt: skip


def _replace_work(n_pairs: int, n: int, te: np.ndarray | None) -> int:
    return n_pairs * ((n + 63) // 64 + (0 if te is None else TE_WORK))


_NO_TE = np.zeros(0, np.float64)


def check_out(out: np.ndarray, n_pairs: int) -> np.ndarray:
    """`out` if it can take the TE of n_pairs pairs (the kernels write without bounds checks)."""
    if not (isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (n_pairs,) and out.flags.writeable):
        raise ValueError(f"out must be a writable float64 array of shape ({n_pairs},), got {getattr(out, 'dtype', type(out))} {getattr(out, 'shape', '')}")
    return out


def te_from_counts(counts: TripleCounts, pairs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """TE (bits) per pair from counts taken over the same pairs, into `out` (float64, (P,))
    when given."""
    table = klogk_table(counts.n)
    out = np.empty(len(pairs), np.float64) if out is None else check_out(out, len(pairs))
    return _te_from_counts(counts.n, counts.target, counts.source, counts.pair, pairs, table, out)


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


def _checked_pair(sources, targets, delay, ndim: int, names: tuple[str, str]):
    """(sources, targets, delay) as `binary_view`s of one length and a checked delay."""
    src = binary_view(sources, names[0], ndim)
    tgt = binary_view(targets, names[1], ndim)
    if src.shape[1] != tgt.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same length, got {src.shape[1]} and {tgt.shape[1]}"
        )
    return src, tgt, check_delay(delay, src.shape[1])


def transfer_entropy_pairs(sources, targets, pairs=None, delay: int = 1) -> np.ndarray:
    """TE(source i -> target j) in bits for many pairs of binary series.

    sources: (n_src, T), targets: (n_tgt, T), binary.  With `pairs` a (P, 2) array
    of (source index, target index) rows, returns the (P,) TE of each pair; with
    pairs=None, the full (n_tgt, n_src) matrix M[j, i] = TE(source i -> target j).
    """
    names = ("sources", "targets")
    src, tgt, delay = _checked_pair(sources, targets, delay, 2, names)
    if pairs is not None:
        checked = check_pairs(pairs, len(src), len(tgt))
        te = np.empty(len(checked), np.float64)
        _run_pairs(src, tgt, delay, checked, te, names)
        return te
    work = len(src) * len(tgt) * ((src.shape[1] + 63) // 64 + TE_WORK)
    kernel, n_blocks = _kernel(_matrix_serial, _matrix_parallel, work)
    matrix, bad_src, bad_tgt = kernel(*as_bytes(src), *as_bytes(tgt), delay, klogk_table(src.shape[1]), n_blocks)
    _check_values(bad_src, bad_tgt, names)
    return matrix


_ONE_PAIR = np.zeros((1, 2), np.int64)


def transfer_entropy(source, target, delay: int = 1) -> float:
    """TE(source -> target) in bits for two 1-D binary series of equal length."""
    names = ("source", "target")
    src, tgt, delay = _checked_pair(source, target, delay, 1, names)
    te = np.empty(1, np.float64)
    _run_pairs(src, tgt, delay, _ONE_PAIR, te, names)
    return float(te[0])
