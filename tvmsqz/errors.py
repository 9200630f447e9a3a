"""One exception type for every mistake a user can make.

The CLI turns a `TvmsqzError` into one line on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""


class TvmsqzError(Exception):
    """A user-facing error whose message is a complete one-line explanation."""
