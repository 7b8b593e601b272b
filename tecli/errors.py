"""The one exception type for a user's mistake.

Anything raised as UserError reaches the user as one line (what is wrong and how
to fix it) with exit code 2 and no traceback; everything else is a bug or a
failure and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix: bad value, unknown name, missing files."""
