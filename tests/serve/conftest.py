"""Serving tests share the report tests' headless Chromium."""

from tests.report.conftest import chromium_driver  # noqa: F401
