"""TOML text from the values of a sweep file: one value (for variant names and --set
comments) or a whole document (the effective sweep file recorded with --set).

Only what a sweep file holds is written: strings, booleans, integers, floats, arrays
and tables (tomllib has no writer, and a sweep file needs no more than these).
"""

from __future__ import annotations

import re
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    escaped = "".join(
        "\\" + c if c in '"\\' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text
    )
    return f'"{escaped}"'


def key_text(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def value_text(value: Any, compact: bool = False) -> str:
    """One value as TOML writes it; `compact` leaves out the spaces in arrays and tables."""
    comma = "," if compact else ", "
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # Python's repr of a finite float is valid TOML (1.0, 1e-05)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + comma.join(value_text(v, compact) for v in value) + "]"
    if isinstance(value, dict):
        items = comma.join(f"{key_text(k)} = {value_text(v, compact)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(f"no TOML text for {type(value).__name__}")


def document_text(doc: dict, path: tuple[str, ...] = ()) -> str:
    """A table as TOML text that loads back to it: its values, then one [header] per sub-table
    (a table that holds only tables gets no header of its own)."""
    values = [f"{key_text(k)} = {value_text(v)}\n" for k, v in doc.items() if not isinstance(v, dict)]
    text = "".join(values)
    if path and (values or not doc):
        text = f"[{'.'.join(map(key_text, path))}]\n{text}"
    for key, table in doc.items():
        if isinstance(table, dict):
            text += ("\n" if text else "") + document_text(table, (*path, key))
    return text
