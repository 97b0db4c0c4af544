"""Atomic file writes for reports (see :mod:`vitkit.atomic`)."""

from __future__ import annotations

from vitkit.atomic import write_bytes_atomic as atomic_write_bytes
from vitkit.atomic import write_text_atomic as atomic_write_text

__all__ = ["atomic_write_bytes", "atomic_write_text"]
