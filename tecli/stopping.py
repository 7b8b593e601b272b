"""Ctrl-C and SIGTERM stop a run the same way, and never in the middle of a database write.

Within `stop_signals()` both raise KeyboardInterrupt in the main thread. A signal that
arrives inside `shielded()` (a claim, an epoch's commit, a final status) is held until
the block ends, so a stop can never leave a transaction half done or a connection in a
state that would keep the run from recording itself interrupted. A Ray sweep's stop
(tecli.sweep.ray_actors) arrives as SIGINT and is held the same way. Once a block has
raised, further signals are ignored: the run is stopping already, and a second
KeyboardInterrupt must not cut short its recording.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

_shield_depth = 0
_pending = False
_raised = False


def _handler(signum, frame) -> None:
    global _pending, _raised
    if _raised:
        return
    if _shield_depth:
        _pending = True
    else:
        _raised = True
        raise KeyboardInterrupt


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM, and SIGINT unless this process ignores it (a sweep's local workers leave
    Ctrl-C to their parent), raise KeyboardInterrupt within the block."""
    global _pending, _raised
    _pending = _raised = False
    handled = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])
    previous = {number: signal.signal(number, _handler) for number in handled}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def shielded() -> Iterator[None]:
    """A stop signal arriving in the block is raised when the block ends."""
    global _shield_depth, _pending, _raised
    _shield_depth += 1
    try:
        yield
    finally:
        _shield_depth -= 1
        if not _shield_depth and _pending:
            _pending = False
            _raised = True
            raise KeyboardInterrupt
