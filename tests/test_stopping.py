"""tecli.stopping: SIGTERM and SIGINT raise KeyboardInterrupt once per block, never inside a
shielded write; later signals of the same stop are ignored (a Ray task gets the driver's
stop twice: its stop flag and Ray's cancel)."""

import signal

import pytest

from tecli.stopping import shielded, stop_signals


@pytest.fixture(autouse=True)
def sigint_handled():
    """SIGINT handled as Python does by default: a test process started in the background
    (a non-interactive shell's `&`) inherits SIGINT ignored, which stop_signals keeps."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("first, second", [(signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)])
def test_a_stop_raises_once_and_the_next_signals_are_ignored(first, second):
    with stop_signals():
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(first)
        signal.raise_signal(second)  # the run is stopping already: nothing raised
        signal.raise_signal(first)


def test_a_stop_in_a_shielded_block_is_raised_when_the_block_ends():
    done = []
    with stop_signals():
        with pytest.raises(KeyboardInterrupt):
            with shielded():
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGINT)
                done.append("the write")
        assert done == ["the write"]
        with shielded():
            signal.raise_signal(signal.SIGTERM)  # after the stop was raised: ignored, even here
        done.append("recorded interrupted")
    assert done == ["the write", "recorded interrupted"]


def test_handlers_are_restored_and_each_block_stops_anew():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    for _ in range(2):
        with stop_signals():
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGTERM)
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_process_that_ignores_sigint_keeps_ignoring_it():
    """A local sweep worker ignores Ctrl-C (its parent coordinates it); SIGTERM still stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with stop_signals():
        signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
