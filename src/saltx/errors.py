"""saltx's own exception types, shared by every layer (this module imports nothing)."""

from __future__ import annotations


class DataError(ValueError):
    """A problem with an input file, a data config key or the values read.

    Messages name the file, dataset, variable or key that was wrong and what was expected
    or available, so that a user can fix the config or the file without a debugger.
    """


class RemoteError(DataError):
    """A remote object could not be found, reached or read; the message names the URL."""
