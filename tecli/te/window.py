"""Sliding-window TE over a stream of mini-batches, for the training feedback.

Training presents samples in batches; TE is wanted over the last W samples and
refreshed every few batches.  Recomputing from the raw window at each refresh
would repack W samples per neuron every time.  Instead each pushed block is
packed once, its triple counts (see engine.TripleCounts) are kept in a ring of
`window_blocks` slots, and running totals are updated with one add and one
subtract per pair.  Reading TE is then O(P) from the totals.  A block comes as
0/1 values (push, or block() and push_block) or as activations and thresholds
(push_values: compared inside the kernel, which carries the last samples itself).

The stream is exact across block boundaries: the last h = max(1, delay) samples
of the previous block are carried, so the first triples of a block see y(t-1)
and x(t-d) from the block before.  `reset()` starts a new stream (use it when
pushed blocks are not consecutive samples).
"""

from __future__ import annotations

import numpy as np

from tecli.te import engine, packing


class SlidingPairTE:
    """TE of fixed (source, target) pairs over the last `window_blocks` pushed blocks."""

    def __init__(self, n_sources: int, n_targets: int, pairs, window_blocks: int, delay: int = 0, parallel: bool = True):
        """parallel: a large block's pairs are split over Numba's threads (engine.PARALLEL_MIN_WORK);
        the training feedback turns it off, as torch's threads hold the cores then."""
        if window_blocks < 1:
            raise ValueError(f"window_blocks must be >= 1, got {window_blocks}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        # int32 indices, as the int32 counts below: half the memory of int64
        self.pairs = engine.check_pairs(pairs, n_sources, n_targets).astype(np.int32)
        self.n_sources = n_sources
        self.n_targets = n_targets
        self.delay = int(delay)
        self.window_blocks = int(window_blocks)
        self.parallel = parallel
        # every pair, in matrix order (fraction 1 in the feedback): the engine's dense count loop and TE read
        self._dense = len(self.pairs) == n_sources * n_targets and bool(
            (self.pairs == np.stack(np.divmod(np.arange(len(self.pairs)), n_sources)[::-1], axis=1)).all())
        self._h = engine.history(self.delay)
        self._ring = engine.CountRing.empty(self.window_blocks, n_sources, n_targets, len(self.pairs))
        self._klogk = engine.klogk_table(0)  # push_values' table, grown when a block would pass its end
        self._buffers: dict[int, tuple[np.ndarray, ...]] = {}  # samples -> block() buffers and their views
        # Every triple counted since the window was made, summed over its neurons: triples,
        # source ones (c) and target ones (a); the feedback's fire rates come from these.
        self.counted = self._ring.counted
        self.reset()

    def reset(self) -> None:
        """Forget every block and the carried samples: the next push starts a new stream."""
        for counts in self._ring[:-1]:  # all but `counted`
            counts[...] = 0
        self._carry_src = np.zeros((self.n_sources, 0), np.uint8)
        self._carry_tgt = np.zeros((self.n_targets, 0), np.uint8)

    @property
    def samples(self) -> int:
        """Number of triples in the current window."""
        return int(self._ring.position[1])

    def block(self, samples: int) -> tuple[np.ndarray, np.ndarray]:
        """Writable (n_sources, samples) and (n_targets, samples) uint8 views in which to
        write the next block's 0/1 values, then call push_block(): the training feedback
        fills them straight from its tensors, sparing push() its checks and copies."""
        if samples not in self._buffers:
            h = self._h
            src = np.zeros((self.n_sources, h + samples), np.uint8)
            tgt = np.zeros((self.n_targets, h + samples), np.uint8)
            self._buffers[samples] = (src, tgt, src[:, h:], tgt[:, h:])
        self._pending = samples
        return self._buffers[samples][2:]

    def push_block(self, te: np.ndarray | None = None) -> None:
        """Push the block written into block()'s views (same result as push() of it)."""
        src, tgt, _, _ = self._buffers[self._pending]
        h, carried = self._h, self._carry_src.shape[1]
        if carried == h:  # the usual case: the carried samples go in front, no copy of the block
            src[:, :h] = self._carry_src
            tgt[:, :h] = self._carry_tgt
            self._push_joined(src, tgt, te)
        else:  # a new stream: fewer samples carried than the buffer has room for
            self.push(src[:, h:], tgt[:, h:], te)

    def push(self, sources, targets, te: np.ndarray | None = None) -> None:
        """Append one block: sources (n_src, B) and targets (n_tgt, B), binary, in sample order.
        With `te` (float64, (P,)), the pairs' TE over the window with this block goes there,
        as te(te) would write it, read in the same pass as the block's counts."""
        src = packing.binary_view(sources, "sources", 2)
        tgt = packing.binary_view(targets, "targets", 2)
        if src.shape != (self.n_sources, tgt.shape[1]) or tgt.shape[0] != self.n_targets:
            raise ValueError(
                f"block shapes {src.shape} and {tgt.shape} do not match "
                f"({self.n_sources}, B) and ({self.n_targets}, B)"
            )
        self._push_joined(np.concatenate([self._carry_src, src], axis=1), np.concatenate([self._carry_tgt, tgt], axis=1), te)

    def _push_joined(self, src: np.ndarray, tgt: np.ndarray, te: np.ndarray | None) -> None:
        """Count the triples of the carried samples followed by the block (C-contiguous
        integer arrays) into the ring, and carry the block's last samples."""
        if tgt.shape[1] <= self._h:  # not one full triple yet: the samples wait in the carry
            packing.pack_binary(src, "sources")  # (packed only to check their values)
            packing.pack_binary(tgt, "targets")
            self._keep_carry(src, tgt)
            if te is not None:
                self.te(te)
            return
        engine.replace_counts(src, tgt, self.pairs, self.delay, self._ring, te, self.parallel, self._dense)  # checks the values too
        self._keep_carry(src, tgt)

    def push_values(self, sources: np.ndarray, source_threshold: float, targets: np.ndarray, target_threshold: float,
                    te: np.ndarray | None = None) -> None:  # fmt: skip
        """Append the block sources > source_threshold, targets > target_threshold, from
        (B, n_src) and (B, n_tgt) C-contiguous float32 activations (sample by sample, as
        torch holds a layer's output), compared as NumPy compares float32: what push() of
        the transposed comparisons does, in one kernel call with no binary block in between.

        The training feedback calls this at every batch, so the kernel is called first and
        checks what it is given itself (engine.replace_counts_thresholded); only a block it
        does not take comes to the Python checks, which raise for bad arguments (measured
        alone, alternating with the checks-first version: 4.1 against 6.9 us a call on a
        4 x 3 window, 12.0 against 15.1 on 84 x 10, 74.6 against 78.8 on 120 x 84)."""
        try:
            if self._count_values(sources, source_threshold, targets, target_threshold, te):
                return
        except TypeError:  # not the kernel's types: the checks below say what is wrong
            pass
        self._push_values_checked(sources, source_threshold, targets, target_threshold, te)

    def _push_values_checked(self, sources, source_threshold: float, targets, target_threshold: float,
                             te: np.ndarray | None) -> None:  # fmt: skip
        """push_values of a block the kernel did not take: wrong arguments raise; the first
        block of a new stream and one shorter than the history go through push(); one past
        the k log2 k table grows it."""
        n = sources.shape[0] if isinstance(sources, np.ndarray) and sources.ndim == 2 else -1
        for values, width, name in ((sources, self.n_sources, "sources"), (targets, self.n_targets, "targets")):
            if not engine.float_rows(values, n, width):
                raise ValueError(f"{name} must be float32 of shape (B, {width}), C-contiguous, with the sources' B, "
                                 f"got {getattr(values, 'dtype', type(values))} {getattr(values, 'shape', '')}")  # fmt: skip
        if te is not None:
            engine.check_out(te, len(self.pairs))
        g_src, g_tgt = float(source_threshold), float(target_threshold)
        if self._carry_src.shape[1] < self._h or n < self._h:  # a new stream, or a block shorter than the history
            return self.push(np.greater(sources, np.float32(g_src)).T, np.greater(targets, np.float32(g_tgt)).T, te)
        self._klogk = engine.klogk_table(self.samples + n)  # (the shared table doubles: amortized)
        # read-only or unaligned activations and a strided TE array are not the kernel's types: copies
        sources, targets = (np.require(values, requirements="CAW") for values in (sources, targets))
        out = te if te is None or te.flags.c_contiguous else np.empty_like(te, order="C")
        taken = self._count_values(sources, g_src, targets, g_tgt, out)
        if out is not te:
            te[...] = out
        if not taken:  # cannot happen: everything _thresholded_fits asks was checked above
            raise RuntimeError("the thresholded kernel refused a checked block")

    def _count_values(self, sources, source_threshold, targets, target_threshold, te: np.ndarray | None) -> bool:
        """The thresholded kernel on this window's carries, ring and table: whether it took the
        block (see engine.replace_counts_thresholded)."""
        n_blocks = engine.replace_blocks(len(self.pairs), len(sources), te) if self.parallel else 1
        return engine.replace_counts_thresholded(sources, source_threshold, self._carry_src, targets, target_threshold,
                                                 self._carry_tgt, self.pairs, self.delay, self._ring, self._klogk, te,
                                                 n_blocks, self._dense)  # fmt: skip

    def _keep_carry(self, src: np.ndarray, tgt: np.ndarray) -> None:
        h = self._h
        if self._carry_src.shape[1] == h and src.shape[1] >= h:  # in place: no new arrays
            self._carry_src[...] = src[:, -h:]
            self._carry_tgt[...] = tgt[:, -h:]
        else:
            self._carry_src = src[:, -h:].astype(np.uint8)
            self._carry_tgt = tgt[:, -h:].astype(np.uint8)

    def te(self, out: np.ndarray | None = None) -> np.ndarray:
        """(P,) TE in bits of each pair over the current window (zeros while empty), into
        `out` when given."""
        return engine.te_from_counts(self._ring.totals(), self.pairs, out)

    def _counts(self) -> dict[str, np.ndarray]:
        """The ring's count arrays by their names in a state_dict."""
        ring = self._ring
        return {"ring_n": ring.n, "ring_target": ring.target, "ring_source": ring.source, "ring_pair": ring.pair,
                "total_target": ring.total_target, "total_source": ring.total_source, "total_pair": ring.total_pair}  # fmt: skip

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """Everything the window holds (ring, totals, slot, carried samples), for checkpoints."""
        position = self._ring.position
        return {**{name: array.copy() for name, array in self._counts().items()},
                "total_n": int(position[1]), "slot": int(position[0]),
                "carry_src": self._carry_src.copy(), "carry_tgt": self._carry_tgt.copy()}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict of a window with the same pairs, sizes and delay (a state that
        no window can reach raises, and leaves this window as it was)."""
        arrays = self._counts()
        for name, array in arrays.items():
            if np.shape(state[name]) != array.shape:
                raise ValueError(f"window state {name} has shape {np.shape(state[name])}, expected {array.shape}")
        carry_src, carry_tgt = (np.array(state[name], np.uint8, order="C") for name in ("carry_src", "carry_tgt"))
        position = np.array([state["slot"], state["total_n"]], np.int64)
        values = {name: np.asarray(state[name], array.dtype) for name, array in arrays.items()}  # checked as they will be held
        if not self._reachable(values, position, carry_src, carry_tgt):
            raise ValueError("window state is inconsistent: its counts, slot or carried samples cannot come from a window")
        for name, array in arrays.items():
            array[...] = values[name]
        self._ring.position[...] = position
        self._carry_src, self._carry_tgt = carry_src, carry_tgt

    def _reachable(self, values: dict[str, np.ndarray], position: np.ndarray, carry_src: np.ndarray,
                   carry_tgt: np.ndarray) -> bool:  # fmt: skip
        """A restored state must be one a window can reach: the kernels index the k log2 k
        table by its cell counts and the ring by its slot without bounds checks, so counts
        that contradict each other (a cell below 0) must not get there."""
        ring_n, h = values["ring_n"], self._h
        rings = (values["ring_target"], values["ring_source"], values["ring_pair"])
        totals = (values["total_target"], values["total_source"], values["total_pair"])
        return (
            0 <= position[0] < self.window_blocks
            and ring_n.min(initial=0) >= 0 and position[1] == ring_n.sum()
            and all(np.array_equal(t, r.sum(axis=0)) for t, r in zip(totals, rings))
            and carry_src.ndim == carry_tgt.ndim == 2
            and carry_src.shape[0] == self.n_sources and carry_tgt.shape[0] == self.n_targets
            and carry_src.shape[1] == carry_tgt.shape[1] <= h
            and carry_src.max(initial=0) <= 1 and carry_tgt.max(initial=0) <= 1
            and _cells_nonnegative(ring_n, *rings, self.pairs)
        )  # fmt: skip


def _cells_nonnegative(n, target, source, pair, pairs) -> bool:
    """Every joint count that TE reads from these (k, ...) ring counts (see engine._te and
    engine._target_part, which reads every target's, paired or not) is >= 0."""
    n = np.asarray(n, np.int64)[:, None]
    a, b, ab = (target[..., k].astype(np.int64) for k in range(3))
    target_cells = (ab, a - ab, b - ab, n - a - b + ab)
    a, b, ab = (counts[:, pairs[:, 1]] for counts in (a, b, ab))
    c = source[:, pairs[:, 0]].astype(np.int64)
    ac, bc, abc = (pair[..., k].astype(np.int64) for k in range(3))
    cells = (abc, ab - abc, ac - abc, bc - abc, a - ab - ac + abc, b - ab - bc + abc, c - ac - bc + abc,
             n - a - b - c + ab + ac + bc - abc, b - bc, c - bc, n - b - c + bc)  # fmt: skip
    return all(cell.min(initial=0) >= 0 for cell in target_cells + cells)
