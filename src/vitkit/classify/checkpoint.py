"""Training checkpoints: written atomically every epoch, read without unpickling objects."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vitkit.atomic import atomic_path
from vitkit.console import stderr_console
from vitkit.errors import VitkitError

CHECKPOINT_FORMAT = 1
LAST_CHECKPOINT = "last.pt"


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


def last_checkpoint(ckpt_dir: Path) -> dict[str, Any] | None:
    """The run's ``last.pt``, or None (said on stderr) when the run has none yet."""
    path = ckpt_dir / LAST_CHECKPOINT
    if not path.is_file():
        stderr_console.print(f"no checkpoint in {ckpt_dir}; starting from the beginning")
        return None
    return load_checkpoint(path)


def restore_progress(progress: Any, checkpoint: dict[str, Any], stages: Sequence[str],
                     stage_epochs: dict[str, int]) -> bool:
    """Copies the checkpoint's progress (epoch, stage, best so far …) onto ``progress`` and
    says where the run goes on; True when the stage it stopped in still has epochs to run
    (its optimiser and schedule state then apply), False when the next stage starts fresh."""
    for key, value in checkpoint["progress"].items():
        setattr(progress, key, value)
    stage = stages[progress.stage_index]
    stderr_console.print(f"resuming after epoch {progress.epoch} (stage '{stage}')")
    return bool(progress.stage_epoch < stage_epochs[stage])
