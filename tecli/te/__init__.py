"""Transfer-entropy engine (pure NumPy/Numba, no torch) and its sliding window."""

from tecli.te.engine import transfer_entropy, transfer_entropy_pairs
from tecli.te.window import SlidingPairTE

__all__ = ["transfer_entropy", "transfer_entropy_pairs", "SlidingPairTE"]
