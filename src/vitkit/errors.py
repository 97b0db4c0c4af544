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


class ImageFailure(VitkitError):
    """One image could not be predicted or scored: missing, unreadable, or not an image.

    The one type for a per-image failure, whether a classifier predicts or an anomaly
    detector scores. Verbs over many images do not raise it: they yield or collect it beside
    the results and go on (``to_dict()`` is the ``{"path", "error"}`` entry of ``--json``).
    Decoding itself raises :class:`vitkit.data.images.ImageProblem`; the caller turns that
    into this, with the path.
    """

    def __init__(self, path: str, error: str) -> None:
        super().__init__(path, error)  # both in args: the exception pickles and compares by them
        self.path = path
        self.error = error

    def __str__(self) -> str:
        return f"{self.path}: {self.error}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageFailure) and self.args == other.args

    def __hash__(self) -> int:
        return hash(self.args)

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "error": self.error}


class NothingProcessedError(DataError):
    """None of the given images could be used: every path was missing, empty or unreadable.
    Exit code 2 like any user error; when only some fail, a verb succeeds and counts them."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when empty), at most ``limit``
    characters: enough to name a deep library error in a one-paragraph user message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
