"""Parameter grids of sweep files: a list is a grid dimension; expanded variants get names.

A run's parameters come from [defaults] / [defaults.te], then [datasets.X], then the
variant (the later wins, whole: a scalar in a variant replaces a list in [defaults]).
Every parameter that ends up as a list is one dimension of the run's grid, wherever
the list was written, and the variant's name says which value it took:

    te(lam=4.0,mode=dampen)

(Parentheses, not brackets: the terminal tables and progress lines read `[...]` as
markup and would drop it.) The listed parameters come in alphabetical order, each as
`key=value` with the value in its canonical form (the one the run key hashes) as TOML
writes it without spaces, and strings without quotes: lam=4.0 whether the file says 4
or 4.0, layers=[-2,-1] (indices counted from the end, sorted), lr=1e-05.
A one-value list is a dimension too (`lam = [4]` names its runs te(lam=4.0)), so
growing a list later keeps the names, and the run keys, of the runs already done.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Any

from tecli.sweep.toml_text import value_text


@dataclass(frozen=True)
class Param:
    """One parameter as written: one value, or a list of values (`listed`), in canonical form."""

    values: tuple[Any, ...]
    listed: bool


def _shown(value: Any) -> str:
    """A value as a variant name writes it."""
    return value if isinstance(value, str) else value_text(value, compact=True)


def expand(params: dict[str, Param]) -> list[tuple[str, dict[str, Any]]]:
    """Every combination of the listed parameters: (name suffix, all parameters' values).
    The suffix is "" when nothing is listed, else "(key=value,...)"."""
    listed = sorted(key for key, param in params.items() if param.listed)
    fixed = {key: param.values[0] for key, param in params.items() if not param.listed}
    combinations = []
    for combination in product(*(params[key].values for key in listed)):
        suffix = ",".join(f"{key}={_shown(value)}" for key, value in zip(listed, combination))
        values = {**fixed, **dict(zip(listed, combination))}
        combinations.append((f"({suffix})" if listed else "", values))
    return combinations
