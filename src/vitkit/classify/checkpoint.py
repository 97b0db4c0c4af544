"""Training checkpoints: written atomically every epoch, read without unpickling objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vitkit.atomic import atomic_path
from vitkit.errors import VitkitError

CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Saves ``state`` (tensors, numbers, strings, lists, dicts) through a temp file + rename.

    A run killed while writing leaves the previous checkpoint intact.
    """
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Loads a checkpoint with ``weights_only=True``: plain data only, no code runs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file is a user-facing problem
        raise VitkitError(
            f"cannot read checkpoint {path} ({exc}). Delete it to start the run afresh."
        ) from exc
    if state.get("format") != CHECKPOINT_FORMAT:
        raise VitkitError(f"{path} was written by another vitkit version; start a new run.")
    return state
