"""The one exception type for a user's mistake.

Anything raised as UserError reaches the user as one line (what is wrong and how
to fix it) with exit code 2 and no traceback; everything else is a bug or a
failure and keeps its traceback.
"""

import re

SHOWN_LIMIT = 200
# A run of this many non-space characters in a message is a user's value that missed shown().
# (The punctuation that ends a run, as in "--db VALUE: ...", stays.)
_LONG_RUN = re.compile(rf"\S{{{SHOWN_LIMIT + 100},}}?(?=[:;,.]?(?:\s|$))")


class UserError(Exception):
    """A mistake the user can fix: bad value, unknown name, missing files."""

    def __init__(self, message: object = "", *args: object) -> None:
        # Safety net: a value echoed without shown() (a 10,000-character --db) still stays short.
        super().__init__(_LONG_RUN.sub(lambda run: shown(run.group()), str(message)), *args)


def shown(value: object, limit: int = SHOWN_LIMIT) -> str:
    """A user's value for an error message, cut to about `limit` characters."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def first_line(error: BaseException) -> str:
    """An exception's message, first line only (PostgreSQL and Ray add detail lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
