"""The helper that turns a missing outside dependency into a skip, or a failure in CI."""

from __future__ import annotations

import pytest
from tests.requirements import ENV, require


def test_a_missing_dependency_skips_when_nothing_is_required(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no chromium here"):
        require("chromium", "no chromium here")


def test_a_missing_dependency_fails_when_it_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, " Chromium , postgres,ray")
    with pytest.raises(pytest.fail.Exception, match=f"no ray here .*{ENV} requires ray"):
        require("ray", "no ray here")


def test_only_the_listed_dependencies_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "postgres")
    with pytest.raises(pytest.skip.Exception):
        require("ray", "no ray here")
    with pytest.raises(pytest.fail.Exception):
        require("postgres", "no server here")


def test_a_misspelt_requirement_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "chromium,postgresql")
    with pytest.raises(pytest.UsageError, match="postgresql.*chromium, postgres, ray"):
        require("chromium", "no chromium here")


def test_an_unknown_dependency_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="redis"):
        require("redis", "no redis here")
