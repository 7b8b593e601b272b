"""Transfer-entropy engine (NumPy/Numba) and its sliding window.

Importing it does not import torch: `pack_bits_torch` imports torch when called.
"""

from tecli.te.engine import transfer_entropy, transfer_entropy_pairs
from tecli.te.packing import pack_bits, pack_bits_torch
from tecli.te.window import SlidingPairTE

__all__ = ["SlidingPairTE", "pack_bits", "pack_bits_torch", "transfer_entropy", "transfer_entropy_pairs"]
