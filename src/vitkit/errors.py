"""The few exception types vitkit raises on purpose.

A :class:`VitkitError` is a user error: the CLI prints its message (no traceback) and exits
with code 2. Anything else that escapes is a bug and exits with code 1.
"""

from __future__ import annotations


class VitkitError(Exception):
    """A problem the user can fix: a bad path, a bad option, unusable data.

    The message says what is wrong and how to fix it, in one paragraph.
    """

    exit_code = 2


class DataError(VitkitError):
    """The images or the data layout cannot be used as given."""


class ConfigError(VitkitError):
    """A configuration file or option is invalid."""


class BundleError(VitkitError):
    """A bundle is missing, incomplete, or written by an incompatible version."""


class WeightsError(VitkitError):
    """Model weights cannot be found, downloaded, or matched to the architecture."""


class NothingProcessedError(DataError):
    """None of the given images could be used: every path was missing, empty or unreadable.
    Exit code 2 like any user error; when only some fail, a verb succeeds and counts them."""
