"""`tecli sweep FILE --set KEY.PATH=VALUE`: a file value replaced from the command line.

KEY.PATH is a TOML dotted key (quote a part that holds a dot: variants."lr.02".lr) and
VALUE a TOML value (strings in quotes: defaults.te.mode="dampen"). Which paths may be
set is the sweep file's business (tecli.sweep.file); this module parses, sets, and
writes the effective text that is recorded with the sweep: a comment block with the
overrides and the file as written (commented out, kept for the record), then the
overridden table in full as TOML, which is what loads.
"""

from __future__ import annotations

import tomllib
from typing import Any

from tecli.errors import UserError, shown
from tecli.sweep.toml_text import document_text, key_text, value_text

EXAMPLE = "defaults.te.lam=[1,4]"


def _key_path(doc: dict) -> tuple[str, ...] | None:
    """The one dotted key of `{key} = 0`, or None when the text held more than one key."""
    path: tuple[str, ...] = ()
    while isinstance(doc, dict):
        if len(doc) != 1:
            return None
        key, doc = next(iter(doc.items()))
        path += (key,)
    return path


def parse_set(text: str) -> tuple[tuple[str, ...], Any]:
    """`KEY.PATH=VALUE` as (key path, value); UserError (one line) when it is not one."""
    for at in (i for i, c in enumerate(text) if c == "="):  # the first '=' not inside a quoted key
        key, value = text[:at], text[at + 1 :]
        try:
            path = _key_path(tomllib.loads(f"{key} = 0"))
        except tomllib.TOMLDecodeError:
            continue
        if path is None:
            continue
        try:
            parsed = tomllib.loads(f"value = {value}")
        except tomllib.TOMLDecodeError as error:
            parsed = {"error": str(error)}
        if list(parsed) != ["value"]:
            raise UserError(
                f"--set {shown(text)}: the value {shown(repr(value.strip()))} is not a TOML value "
                '(strings need quotes, e.g. defaults.te.mode="dampen")'
            )
        return path, parsed["value"]
    raise UserError(f"--set {shown(text)}: expected KEY.PATH=VALUE, such as {EXAMPLE}")


def set_value(doc: dict, path: tuple[str, ...], value: Any, text: str) -> None:
    """Put `value` at `path`, creating the tables on the way ([defaults], [defaults.te])."""
    table = doc
    for depth, key in enumerate(path[:-1]):
        table = table.setdefault(key, {})
        if not isinstance(table, dict):
            raise UserError(f"--set {shown(text)}: {shown('.'.join(path[: depth + 1]))} is not a table in the sweep file")
    table[path[-1]] = value


def effective_source(source: str, doc: dict, overrides: list[tuple[tuple[str, ...], Any]]) -> str:
    """What is recorded for a sweep run with --set: the overrides and the file as written in
    comments, then the overridden table, which loads to `doc`."""
    lines = ["# The sweep file with these --set overrides (tecli sweep --set KEY.PATH=VALUE):"]
    lines += [f"#   {'.'.join(map(key_text, path))} = {value_text(value)}" for path, value in overrides]
    lines += ["# The file as written, commented out:"]
    lines += [f"# | {line.rstrip(chr(13))}" for line in source.removesuffix("\n").split("\n")]
    lines += ["# What tecli read: the file's table with the overrides applied."]
    return "\n".join(lines) + "\n\n" + document_text(doc)
