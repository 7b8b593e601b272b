"""Bit packing: binary series as uint64 words, 64 samples a word.

Sample t of a series is bit t % 64 of word t // 64, and padding bits are zero: the
bytes of np.packbits(series, axis=1, bitorder="little") read as little-endian words.
`pack_bits` packs NumPy arrays (and checks that every value is 0 or 1); the engine's
kernels pack their raw input with `pack_rows` in the same way.  `pack_bits_torch`
packs a torch tensor on its own device, word for word the same: packing where the
activations are (a CUDA device) copies 1 bit a sample to the host instead of a 32-bit
float.  torch is imported inside that function, so that importing `tecli.te` does not
import it.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_ZERO = np.uint64(0)
_ONE = np.uint64(1)


@intrinsic
def _pack_word(typingctx, arr, start):
    """(word, seen) of the 64 elements arr.flat[start : start + 64] of a C-contiguous
    integer array: bit k of word is bit 0 of element k, seen is the OR of the elements.

    Written as LLVM vector IR (load, truncate to i1, bitcast; OR-reduce), which the
    backend turns into a few SIMD instructions (for bytes, a movemask per 32 of them).
    """
    width = arr.dtype.bitwidth
    sig = types.UniTuple(types.uint64, 2)(arr, types.intp)

    def codegen(context, builder, signature, args):
        element = ir.IntType(width)
        vector = ir.VectorType(element, 64)
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        first = builder.gep(builder.bitcast(data, element.as_pointer()), [args[1]])
        values = builder.load(builder.bitcast(first, vector.as_pointer()), align=1)
        word = builder.bitcast(builder.trunc(values, ir.VectorType(ir.IntType(1), 64)), ir.IntType(64))
        reduce_or = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(element, [vector]), f"llvm.vector.reduce.or.v64i{width}"
        )
        seen = builder.call(reduce_or, [values])
        if width < 64:
            seen = builder.zext(seen, ir.IntType(64))
        return context.make_tuple(builder, signature.return_type, [word, seen])

    return sig, codegen


@nb.njit(inline="always")
def _pack_loop(values, r, start, count):
    """(word, seen) as `_pack_word` for values[r, start : start + count], one at a time."""
    word = _ZERO
    seen = _ZERO
    for k in range(count):
        value = np.uint64(values[r, start + k])
        seen |= value
        word |= value << np.uint64(k)
    return word, seen


@nb.njit(cache=True)
def _pack_values(values, out, lo, hi):
    """Pack rows lo..hi-1 of values (n, T), C-contiguous unsigned integers, into out
    (n, ceil(T/64)) words; returns nonzero when a value is not 0 or 1.

    Full words of values narrower than 8 bytes go through `_pack_word`; 8-byte ones
    through a loop of known length, as fast there (reading memory bounds both) and
    cheaper to compile.
    """
    length = values.shape[1]
    seen = _ZERO
    for r in range(lo, hi):
        for w in range(out.shape[1]):
            start = 64 * w
            if start + 64 > length:
                out[r, w], seen_here = _pack_loop(values, r, start, length - start)
            elif values.itemsize < 8:
                out[r, w], seen_here = _pack_word(values, r * length + start)
            else:
                out[r, w], seen_here = _pack_loop(values, r, start, 64)
            seen |= seen_here
    return seen >> _ONE


@nb.njit(inline="always")
def _flush(out, lo, word, w):
    """Word w of rows lo.. of out from word (one per row), which starts again from zero."""
    for k in range(word.shape[0]):
        out[lo + k, w] = word[k]
        word[k] = _ZERO


@nb.njit(cache=True)
def pack_thresholded(carry, values, threshold, out, lo, hi):
    """Pack rows lo..hi-1 of the stream [carry | values > threshold] into out (n, ceil(T/64))
    words, T = h + B, then keep its last h samples in carry.

    carry: (n, h) uint8 0/1, the samples before the block; values: (B, n) float32 (a
    layer's activations, sample by sample: neuron i's series is column i), B >= h;
    threshold: float32, compared as NumPy compares float32 arrays.  Samples go in the
    outer loop, so values are read in memory order, and each row's word grows in a
    contiguous array of its own, which the inner loop fills in SIMD lanes (4x faster
    than or-ing into out's strided words: 2.4 against 9.9 us for 64 samples x 120).
    """
    h = carry.shape[1]
    length = h + values.shape[0]
    word = np.zeros(hi - lo, np.uint64)
    for t in range(length):
        if t and t % 64 == 0:
            _flush(out, lo, word, t // 64 - 1)
        shift = np.uint64(t % 64)
        if t < h:
            for k in range(word.shape[0]):
                word[k] |= np.uint64(carry[lo + k, t]) << shift
        else:
            row = values[t - h, lo:hi]
            for k in range(word.shape[0]):
                word[k] |= np.uint64(row[k] > threshold) << shift
    _flush(out, lo, word, (length - 1) // 64)
    last = values.shape[0] - h
    for i in range(lo, hi):
        for t in range(h):
            carry[i, t] = values[last + t, i] > threshold


@nb.njit(cache=True)
def pack_rows(raw, size, out, lo, hi):
    """Pack rows lo..hi-1 of raw, the bytes (n, T * size) of C-contiguous integers of
    `size` bytes each, into out (n, ceil(T/64)) words.

    Sample t of a row is bit t % 64 of word t // 64; padding bits are zero.  Returns
    nonzero when a value is not 0 or 1 (read as unsigned, a negative one has its high
    bits set).  The kernels are compiled once, for bytes, whatever the dtype: the size
    picks the unsigned view to read.
    """
    if size == 1:
        return _pack_values(raw, out, lo, hi)
    if size == 2:
        return _pack_values(raw.view(np.uint16), out, lo, hi)
    if size == 4:
        return _pack_values(raw.view(np.uint32), out, lo, hi)
    return _pack_values(raw.view(np.uint64), out, lo, hi)


def binary_view(series, name: str, ndim: int) -> np.ndarray:
    """`series` checked for ndim and dtype, as a C-contiguous 2-D integer array (bool
    seen as uint8; a 1-D series as one row).  Its values are checked when packed."""
    arr = np.asarray(series)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.dtype.kind not in "biu":
        raise ValueError(f"{name} must be binary (bool or 0/1 integers), got dtype {arr.dtype}")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype.kind == "b":  # its bytes, so that a bool byte other than 0/1 is refused
        arr = arr.view(np.uint8)
    return np.ascontiguousarray(arr if arr.ndim == 2 else arr[None, :])


def not_binary(name: str) -> ValueError:
    return ValueError(f"{name} must be binary (0/1), found values outside {{0, 1}}")


def as_bytes(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """A `binary_view` as the kernels take it: its bytes (n, T * itemsize) and itemsize."""
    return (arr if arr.dtype == np.uint8 else arr.view(np.uint8)), arr.itemsize


def pack_binary(raw: np.ndarray, name: str) -> np.ndarray:
    """A `binary_view` packed into (n, ceil(T/64)) words; ValueError if a value is not 0/1."""
    words = np.empty((raw.shape[0], (raw.shape[1] + 63) // 64), np.uint64)
    if pack_rows(*as_bytes(raw), words, 0, raw.shape[0]):
        raise not_binary(name)
    return words


def pack_bits(series) -> np.ndarray:
    """Binary (n, T) series (bool or 0/1 integers) as (n, ceil(T/64)) uint64 words.

    Sample t of a row is bit t % 64 of word t // 64 and padding bits are zero: the
    bytes of np.packbits(series, axis=1, bitorder="little") read as little-endian words.
    """
    return pack_binary(binary_view(series, "series", 2), "series")


def pack_bits_torch(active):
    """(n, T) bool tensor -> (n, ceil(T/64)) int64 tensor of packed words, on its device.

    Sample t of a row is bit t % 64 of word t // 64 and padding bits are zero: the
    words of `tecli.te.engine.pack_bits`, read as int64 (bit 63 is the sign bit).
    """
    import torch

    if active.dtype != torch.bool or active.dim() != 2:
        raise ValueError(f"active must be a 2-D bool tensor, got {active.dtype} of shape {tuple(active.shape)}")
    n, length = active.shape
    n_words = (length + 63) // 64
    if n_words == 0:  # no samples: a view of no bytes as int64 is refused
        return torch.zeros((n, 0), dtype=torch.int64, device=active.device)
    bits = torch.zeros((n, n_words * 64), dtype=torch.uint8, device=active.device)
    bits[:, :length] = active
    shifts = torch.arange(8, dtype=torch.uint8, device=active.device)
    # Little-endian words: byte k of word w holds samples 64w + 8k .. 64w + 8k + 7, low bit first.
    packed_bytes = (bits.view(n, n_words * 8, 8) << shifts).sum(dim=2, dtype=torch.uint8)
    return packed_bytes.view(torch.int64)


def unpack_bits(words, length: int):
    """(n, ceil(length/64)) packed words (as pack_bits_torch wrote them, in a NumPy array)
    -> the (n, length) bool samples."""
    import numpy as np

    as_bytes = np.ascontiguousarray(words).view(np.uint8)  # little-endian words: bytes in sample order
    return np.unpackbits(as_bytes, axis=1, count=length, bitorder="little").view(bool)
