"""tecli.report.records writes csv and json exactly as pandas did (the reference here:
DataFrame(rows), the as-is columns as object Series, to_csv / to_json as the report used them)."""

import json
import math
import random

import numpy as np
import pandas as pd
import pytest

from tecli.report.records import column_kind, csv_text, json_float, json_records

EDGE_FLOATS = [
    0.0, -0.0, 0.1 + 0.2, 1 / 3, 2 / 3, 0.5, 1.0, 3.0, -2.5, 1e-5, 1e-15, 9.99e-16, 1e-16, 1e16, 1e16 + 2,
    9.5e15, 1e22, -1e22, 123456789.123456789, 0.5495936876730595, 0.9999999999999999, 1 - 2**-40,
    math.nan, math.inf, -math.inf, 5e-324,
]  # fmt: skip
STRINGS = ["usps", "a, b", 'say "hi"', "two\nlines", "", "λ=0.5; cpu"]


def pandas_frame(rows: list[dict], as_is: tuple[str, ...]):
    frame = pd.DataFrame(rows)
    for name in as_is:
        frame[name] = pd.Series([row[name] for row in rows], dtype=object)
    return frame


def pandas_records(rows: list[dict], as_is: tuple[str, ...]) -> list[dict]:
    return json.loads(pandas_frame(rows, as_is).to_json(orient="records", double_precision=15))


def random_value(rng: random.Random, kind: str):
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -7, 10**12, rng.randrange(-1000, 1000)])
    if kind == "float":
        return rng.choice([*EDGE_FLOATS, rng.random(), rng.random() * 10 ** rng.randrange(-20, 20)])
    return rng.choice(STRINGS)


def random_rows(rng: random.Random, n_rows: int, n_columns: int) -> list[dict]:
    """Each column draws its values from a random palette of kinds, so columns of every mix occur."""
    kinds = ("none", "bool", "int", "float", "str")
    palettes = [rng.sample(kinds, rng.randrange(1, 4)) for _ in range(n_columns)]
    return [{f"c{k}": random_value(rng, rng.choice(p)) for k, p in enumerate(palettes)} for _ in range(n_rows)]


@pytest.mark.parametrize("seed", range(40))
def test_csv_and_json_equal_pandas_on_columns_of_every_mix(seed):
    rng = random.Random(seed)
    rows = random_rows(rng, n_rows=rng.randrange(1, 12), n_columns=12)
    as_is = tuple(name for name in rows[0] if rng.random() < 0.25)
    assert csv_text(rows, as_is) == pandas_frame(rows, as_is).to_csv(index=False)
    assert json.dumps(json_records(rows, as_is)) == json.dumps(pandas_records(rows, as_is))


@pytest.mark.parametrize(
    ("values", "dtype"),
    [([True, False], "bool"), ([True, None], "object"), ([1, 2], "int64"), ([1, None], "float64"),
     ([1, 2.5], "float64"), ([math.nan, None], "float64"), ([None, None], "object"), ([1, True], "object"),
     (["a", 1], "object"), (["a", None], "str")],
)  # fmt: skip
def test_column_kinds_are_pandas_dtypes(values, dtype):
    kinds = {"bool": "bool", "int64": "int", "float64": "float", "object": "as is", "str": "as is"}
    assert str(pd.DataFrame({"x": values}).dtypes["x"]) == dtype
    assert column_kind(values) == kinds[dtype]


def test_json_float_equals_pandas_encoder_on_a_million_values():
    """Scales from 1e-20 to 1e20 and ties of the 15th decimal, where pandas' encoder and
    correct rounding part (round() agrees on about 9 in 10 of these)."""
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.random(300_000), 10 ** rng.uniform(-20, 20, 300_000), -rng.random(100_000) * 1e3,
        rng.integers(0, 10**15, 300_000) / 1e15 + rng.integers(0, 1000, 300_000),
    ])  # fmt: skip
    expected = json.loads(pd.Series(values).to_json(orient="values", double_precision=15))
    got = [json_float(v) for v in values.tolist()]
    assert got == expected
    assert sum(g != round(v, 15) for g, v in zip(got, values.tolist())) > 1000  # the rule is pandas', not round()


def test_a_value_of_another_type_is_refused_rather_than_written_unlike_pandas():
    """pandas writes np.float32(0.1) as 0.10000000149011612 and types np.int64 apart; rows hold none."""
    for value in (np.float32(0.1), np.int64(3), np.float64(0.5)):
        with pytest.raises(TypeError, match="column 'x' holds a"):
            csv_text([{"x": value}, {"x": 0.2}])
