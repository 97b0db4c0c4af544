"""The one exception the HTTP layer turns into a ``{"error", "detail"}`` answer."""

from __future__ import annotations

RETRY_AFTER_S = 1  # what 503 answers ask clients to wait


class HttpProblem(Exception):
    """A request the service refuses: its status, a short name and what to do about it."""

    def __init__(self, status: int, error: str, detail: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers
