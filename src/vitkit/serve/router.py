"""Which model answers: sticky A/B arms by user, and circuit breakers for the fallback chain."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Sequence

from vitkit.serve.config import Arm


def user_fraction(user_id: str, salt: str = "") -> float:
    """A stable number in [0, 1) for a user: the same user always lands in the same arm,
    across processes and restarts (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256(f"{salt}\0{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_arm(arms: Sequence[Arm], user_id: str | None, route: str = "",
               rng: random.Random | None = None) -> Arm:
    """The arm of ``user_id`` (sticky; weights normalised), or a random one by weight for
    anonymous requests. The route name salts the hash, so a user's arms in two routes are
    independent."""
    point = user_fraction(user_id, route) if user_id else (rng or random).random()
    total = sum(arm.weight for arm in arms)
    edge = 0.0
    for arm in arms:
        edge += arm.weight / total
        if point < edge:
            return arm
    return arms[-1]


class CircuitBreaker:
    """Closed → open after ``failures`` consecutive failures; after ``cooldown_s`` one trial
    request goes through (half-open): success closes it, failure opens it again.

    Every :meth:`allow` that returned True must end in exactly one of :meth:`success`,
    :meth:`failure` or :meth:`release` (the request ended without judging the model: its
    queue was full, or the client went away); otherwise a half-open trial would stay claimed
    and lock the model out for good. :meth:`attempt` pairs them for ``async with``.

    Hand-written rather than ``aiobreaker``: that one lets every call through once the timeout
    passes (no single trial) and keys state on exceptions alone, while here a full queue must
    neither count as a failure nor keep the trial.
    """

    def __init__(self, failures: int = 5, cooldown_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.cooldown = cooldown_s
        self.clock = clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        """Whether a request may try this model now (claims the half-open trial)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self._trial_running = False

    def failure(self) -> None:
        self.consecutive += 1
        if self._trial_running or self.consecutive >= self.threshold:
            self.opened_at = self.clock()
        self._trial_running = False

    def release(self) -> None:
        """The request that :meth:`allow` let through ended without a verdict on the model
        (queue full, cancelled): a claimed half-open trial becomes free for the next one."""
        self._trial_running = False
