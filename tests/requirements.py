"""Skip a test whose outside dependency is missing, unless this run requires that dependency.

A developer without Chromium, PostgreSQL or Ray gets a skip with the reason. CI sets
``VITKIT_REQUIRE=chromium,postgres,ray`` (``.ci/run``), and there the same missing dependency
fails the test instead, so a broken install cannot turn into a green run that tested less.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

ENV = "VITKIT_REQUIRE"
KNOWN = ("chromium", "postgres", "ray")


def required() -> frozenset[str]:
    """The dependencies named in ``$VITKIT_REQUIRE`` (comma-separated, case-insensitive).

    Raises:
        pytest.UsageError: A name that is not one of :data:`KNOWN` (a typo would otherwise
            turn a required dependency back into a silent skip).
    """
    names = {n.strip().lower() for n in os.environ.get(ENV, "").split(",") if n.strip()}
    unknown = sorted(names - set(KNOWN))
    if unknown:
        raise pytest.UsageError(
            f"{ENV} names {', '.join(unknown)}, which no test knows; use a comma-separated "
            f"subset of {', '.join(KNOWN)}"
        )
    return frozenset(names)


def require(dependency: str, reason: str) -> NoReturn:
    """End the calling test because ``dependency`` is missing: fail when ``$VITKIT_REQUIRE``
    names it, skip otherwise. ``reason`` says what is missing and how to install it.

    Call it from a test or a fixture. At module level it skips the module, but a required
    dependency there becomes a collection error, which stops the whole run.
    """
    if dependency not in KNOWN:
        raise ValueError(f"unknown dependency {dependency!r}; add it to KNOWN ({KNOWN})")
    if dependency in required():
        pytest.fail(f"{reason} ({ENV} requires {dependency})", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
