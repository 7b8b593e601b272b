"""Report rows as csv text and json records, byte for byte as pandas wrote them, without pandas.

Earlier reports went through `pandas.DataFrame(rows).to_csv(index=False)` and
`.to_json(orient="records", double_precision=15)`; importing pandas took 0.3 s of a
command that should take at most 1 s.  This module writes the same output from the
same three rules, checked against pandas itself in tests/test_report_records.py:

- a column takes the type pandas infers from its values (`column_kind`): all bool ->
  bool; int and float, with or without missing values, -> float (an int column with a
  missing value turns float, 3 -> 3.0); all int -> int; anything else -> as it is.
  Missing is None or NaN; columns named in `as_is` keep their values as they are.
- csv: a float as repr() ("inf" included), missing as an empty field.
- json: a float as pandas' encoder rounds it to 15 decimals (`json_float`), NaN and
  infinities as null.
"""

from __future__ import annotations

import csv
import io
import math

_BOOL, _INT, _FLOAT, _AS_IS = "bool", "int", "float", "as is"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def column_kind(values: list) -> str:
    """The pandas dtype of a column of these Python values, as one of four kinds."""
    present = [v for v in values if not _missing(v)]
    bools = sum(isinstance(v, bool) for v in present)
    if present and bools == len(values):
        return _BOOL
    if bools or not all(isinstance(v, (int, float)) for v in present):
        return _AS_IS
    if all(v is None for v in values):
        return _AS_IS
    if len(present) == len(values) and all(isinstance(v, int) for v in present):
        return _INT
    return _FLOAT


def json_float(value: float) -> float | None:
    """`value` as pandas' JSON encoder writes it with double_precision=15, read back:
    beyond 1e16 or under 1e-15 as printf's %.15g, else rounded to 15 decimals by the
    encoder's own double arithmetic (a tie rounds to odd), which is not Python's round()."""
    if not math.isfinite(value):
        return None
    magnitude = abs(value)
    if magnitude > 1e16 or (magnitude and magnitude < 1e-15):
        return float(f"{value:.15g}")
    whole = int(magnitude)
    scaled = (magnitude - whole) * 1e15
    frac = int(scaled)
    diff = scaled - frac
    if diff > 0.5 or (diff == 0.5 and (frac == 0 or frac & 1)):
        frac += 1
    if frac >= 10**15:
        frac, whole = 0, whole + 1
    rounded = float(f"{whole}.{frac:015d}")
    return -rounded if value < 0 else rounded


_TYPES = (type(None), bool, int, float, str)  # what report rows hold (no NumPy scalars: pandas types those apart)


def _columns(rows: list[dict], as_is: tuple[str, ...]) -> list[tuple[str, str, list]]:
    names = list(dict.fromkeys(name for row in rows for name in row))
    out = []
    for name in names:
        values = [row.get(name) for row in rows]
        odd = next((v for v in values if type(v) not in _TYPES), None)
        if odd is not None:
            raise TypeError(f"column {name!r} holds a {type(odd).__name__}: only None, bool, int, float and str are written as pandas wrote them")
        out.append((name, _AS_IS if name in as_is else column_kind(values), values))
    return out


def _csv_field(value, kind: str) -> str:
    if _missing(value):
        return ""
    return repr(float(value)) if kind == _FLOAT else str(value)


def csv_text(rows: list[dict], as_is: tuple[str, ...] = ()) -> str:
    columns = _columns(rows, as_is)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([name for name, _, _ in columns])
    for i in range(len(rows)):
        writer.writerow([_csv_field(values[i], kind) for _, kind, values in columns])
    return buffer.getvalue()


def _json_value(value, kind: str):
    if _missing(value):
        return None
    if kind == _FLOAT or isinstance(value, float):
        return json_float(float(value))
    return value


def json_records(rows: list[dict], as_is: tuple[str, ...] = ()) -> list[dict]:
    """The rows as json.loads reads pandas' records back."""
    columns = _columns(rows, as_is)
    return [{name: _json_value(values[i], kind) for name, kind, values in columns} for i in range(len(rows))]
