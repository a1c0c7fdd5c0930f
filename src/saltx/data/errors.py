"""The one exception type raised by the data layer for bad files, configs or values."""

from __future__ import annotations


class DataError(ValueError):
    """A problem with an input file, a data config key or the values read.

    Messages name the file, dataset, variable or key that was wrong and what was expected
    or available, so that a user can fix the config or the file without a debugger.
    """
