"""Plug-in information measures of binarized layer outputs, in bits (NumPy and tecli's TE engine).

A layer's output on the probe set is a (samples, neurons) boolean array `fired`.

- neuron entropy: the binary entropy of each neuron's fire rate over the probe, averaged
  over the layer's neurons (Quétu et al., arXiv 2404.18949: the layer whose neurons are
  most often in one state carries least and is the first to remove).
- H(T): each sample's whole binary vector is one symbol T (its pattern); the plug-in
  entropy of the patterns. The net is deterministic, so T is a function of the input
  X and H(T) = I(X;T) under this binning.
- I(T;Y): plug-in mutual information between the patterns and the labels.
- TE between two layers: the mean over a fixed sample of (source neuron, target neuron)
  pairs of the engine's TE over the probe's binarized series, in the probe's order.

Plug-in estimates over N samples are biased (I(T;Y) upwards) and bounded by log2 N;
README "Observing information flow" says what they can and cannot show.
"""

from __future__ import annotations

import numpy as np

from tecli.te.engine import transfer_entropy_pairs


def _entropy_of_counts(counts: np.ndarray) -> float:
    """Plug-in entropy (bits) of a distribution given by its positive counts."""
    n = counts.sum()
    return float(np.log2(n) - (counts * np.log2(counts)).sum() / n)


def neuron_entropy(fired: np.ndarray) -> float:
    """Mean over neurons of the binary entropy (bits) of each neuron's fire rate."""
    rate = fired.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = -(rate * np.log2(rate) + (1 - rate) * np.log2(1 - rate))
    return float(np.nan_to_num(bits, nan=0.0).mean())  # 0 log 0 = 0: a neuron always (or never) on


def pattern_ids(fired: np.ndarray) -> np.ndarray:
    """Each sample's binary vector as one symbol: equal rows, equal ids (0 .. patterns - 1)."""
    packed = np.packbits(fired, axis=1)
    return np.unique(packed, axis=0, return_inverse=True)[1].reshape(-1)


def entropy(symbols: np.ndarray) -> float:
    """Plug-in entropy (bits) of a sample of integer symbols."""
    return _entropy_of_counts(np.unique(symbols, return_counts=True)[1])


def mutual_information(symbols: np.ndarray, labels: np.ndarray) -> float:
    """Plug-in I(T;Y) = H(T) + H(Y) - H(T,Y) in bits, for integer symbols and labels >= 0."""
    joint = symbols.astype(np.int64) * (int(labels.max()) + 1) + labels
    return max(0.0, entropy(symbols) + entropy(labels) - entropy(joint))  # clip rounding below 0


def sample_pairs(n_sources: int, n_targets: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` distinct (source, target) pairs drawn from `rng` (every pair when there are fewer), sorted."""
    total = n_sources * n_targets
    flat = np.arange(total) if total <= size else np.sort(rng.choice(total, size=size, replace=False))
    return np.stack([flat // n_targets, flat % n_targets], axis=1)


def mean_te(sources: np.ndarray, targets: np.ndarray, pairs: np.ndarray, delay: int = 0) -> float:
    """Mean TE (bits) over `pairs` from the neurons of one layer to those of another:
    `sources` and `targets` are (samples, neurons) binary arrays over the same samples."""
    return float(transfer_entropy_pairs(sources.T, targets.T, pairs, delay).mean())
