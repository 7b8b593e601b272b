"""Watching information flow while a network trains (`tecli run --observe`, `observe` in sweep files).

After every epoch a fixed probe set of training samples goes through the model in
eval mode, and each layer's binarized output is measured (estimators.py: pure NumPy
and tecli's TE engine; probe.py: the torch side). Observing is an execution setting,
like the device: it is not part of the run's specification or run key, it draws no
torch random numbers and changes no model state, so an observed run's metrics are
the unobserved run's, bit for bit. Its time is not part of the epoch's seconds.

This package's top level stays light (no torch, no NumPy): the command line and the
sweep files read the probe size's rule from here.
"""

from __future__ import annotations

from tecli.spec import INT_MAX, Rule

DEFAULT_PROBE = 512  # probe samples: H(T) <= log2(512) = 9 bits, TE over 511 triples, ~1-5 % of a USPS epoch
PROBE_RULE = Rule(int, "an integer >= 2 (probe samples)", lambda v: 2 <= v <= INT_MAX)
# `observe` in a sweep file: true (DEFAULT_PROBE samples), false, or the probe size.
OBSERVE_RULE = Rule((bool, int), "true, false or a probe size >= 2", lambda v: isinstance(v, bool) or 2 <= v <= INT_MAX)


def probe_size(observe: bool | int) -> int | None:
    """A checked `observe` value as the probe size it asks for; None: not observed."""
    if isinstance(observe, bool):
        return DEFAULT_PROBE if observe else None
    return observe
