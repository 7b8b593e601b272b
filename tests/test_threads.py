"""--threads N means N threads for torch and for numba, whatever loads first."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("threads", [1, 2])
def test_configure_sets_torch_and_numba_threads_in_a_fresh_process(threads):
    """numba's OpenMP layer, launched by its first set_num_threads, resets OpenMP's thread
    count once torch has used it: set after torch's, the first run of a warm sweep worker
    trained on every core."""
    code = (
        "import numba, torch\n"
        "from tecli.runner import configure\n"
        "torch.nn.Conv2d(1, 4, 3)(torch.ones(64, 1, 28, 28))  # a parallel op: torch has set up its threads\n"
        f"configure('cpu', {threads})\n"
        "torch.ones(8).sum()\n"
        "print(torch.get_num_threads(), numba.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(threads), str(threads)]
