"""User-facing errors.

Anything raised as a :class:`FastrobustError` is a problem with the user's
input (a bad value, a missing or corrupted file) rather than a bug. The CLI
prints its message (which names the problem and the fix) without a
traceback and exits with status 2.
"""


class FastrobustError(Exception):
    """A problem with the user's input; the message says what to do."""


class ConfigError(FastrobustError):
    """An invalid configuration value, refused before any work starts."""


class DataError(FastrobustError):
    """A data set that is missing, corrupted or malformed."""
