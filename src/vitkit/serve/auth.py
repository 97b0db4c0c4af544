"""Admin authentication: a bearer token compared in constant time, a minimum token length
checked at start-up, and failed attempts rate-limited per client address.

A wrong token costs the client: after ``max_failures`` failures within ``window_s`` its
address is refused with 429 (``Retry-After``) until the window has passed, before any token
comparison, so guessing is slow even for a short token. Successful calls are never limited.
"""

from __future__ import annotations

import collections
import hmac
import time
from collections.abc import Callable

from vitkit.errors import ConfigError
from vitkit.serve.errors import HttpProblem

MIN_TOKEN_CHARS = 16  # ~95 bits from `openssl rand -base64 16`; shorter tokens are refused


def check_token(token: str | None, source: str) -> None:
    """Raises :class:`ConfigError` for a token shorter than :data:`MIN_TOKEN_CHARS`."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"the admin token in {source} has {len(token)} characters; use at "
                          f"least {MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 24`), or unset it "
                          "to keep the admin endpoints off.")


class AdminGuard:
    def __init__(self, token: str | None, hint: str, max_failures: int = 5,
                 window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.token = token
        self.hint = hint
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, collections.deque[float]] = {}

    def check(self, authorization: str | None, client: str) -> None:
        """Returns for the right token; raises :class:`HttpProblem` 401/403/429 otherwise."""
        if self.token is None:
            raise HttpProblem(403, "admin disabled", f"set {self.hint} when starting the "
                              "server to enable admin endpoints")
        recent = self._recent(client)
        if len(recent) >= self.max_failures:
            wait = max(1, int(recent[0] + self.window_s - self.clock()) + 1)
            raise HttpProblem(429, "too many failed attempts",
                              f"{len(recent)} wrong admin tokens from {client} in the last "
                              f"{self.window_s:g} s; retry in {wait} s",
                              {"Retry-After": str(wait)})
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            self._fail(client)
            raise HttpProblem(401, "unauthorized", "send Authorization: Bearer <token>",
                              {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            self._fail(client)
            raise HttpProblem(403, "forbidden", "wrong admin token")

    def is_admin(self, authorization: str | None) -> bool:
        """Whether the header holds the right token (no counting: for optional detail)."""
        scheme, _, given = (authorization or "").partition(" ")
        return (self.token is not None and scheme.lower() == "bearer"
                and hmac.compare_digest(given.encode(), self.token.encode()))

    def _recent(self, client: str) -> collections.deque[float]:
        failures = self._failures.get(client, collections.deque())
        horizon = self.clock() - self.window_s
        while failures and failures[0] < horizon:
            failures.popleft()
        if not failures:
            self._failures.pop(client, None)
        return failures

    def _fail(self, client: str) -> None:
        if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
            self._failures.clear()
        self._failures.setdefault(client, collections.deque()).append(self.clock())
