"""A model and its batcher, replaced together (one dict assignment) when a version changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vitkit.serve.batcher import MicroBatcher
from vitkit.serve.served import ServedModel


@dataclass
class Slot:
    model: ServedModel
    batcher: MicroBatcher[Any, dict[str, Any]]
