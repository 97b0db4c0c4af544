"""Test-time augmentation: more views of the same preprocessed batch, probabilities averaged.

Views keep the batch's shape, so every runtime (ONNX, OpenVINO, int8) runs them as ordinary
batches, and fixed-size models such as ViTs need nothing special:

* ``none``: the image as preprocessed (1 view);
* ``flip``: plus its horizontal mirror (2 views);
* ``flip-scale``: plus a 0.875x zoom-out (shrunk, borders reflected) and a 1.125x zoom-in
  (enlarged, centre-cropped) (4 views).

Each view costs one more forward pass; :class:`TtaTiming` measures what that costs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vitkit.errors import ConfigError

View = Callable[[torch.Tensor], torch.Tensor]


def zoom(batch: torch.Tensor, scale: float) -> torch.Tensor:
    """``(B, C, H, W)`` zoomed by ``scale`` about the centre, same shape: ``scale > 1``
    enlarges and centre-crops, ``scale < 1`` shrinks and reflects the borders outwards."""
    height, width = batch.shape[-2:]
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    if (new_h, new_w) == (height, width):
        return batch
    resized = F.interpolate(batch, size=(new_h, new_w), mode="bilinear", align_corners=False,
                            antialias=scale < 1)
    if scale > 1:
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return resized[..., top:top + height, left:left + width]
    pad_h, pad_w = height - new_h, width - new_w
    # Reflection needs a border thinner than the shrunk image; replicate covers tiny images.
    mode = "reflect" if pad_h < new_h and pad_w < new_w else "replicate"
    return F.pad(resized, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2),
                 mode=mode)


def _identity(batch: torch.Tensor) -> torch.Tensor:
    return batch


def _hflip(batch: torch.Tensor) -> torch.Tensor:
    return batch.flip(-1)


TTA_VIEWS: dict[str, tuple[View, ...]] = {
    "none": (_identity,),
    "flip": (_identity, _hflip),
    "flip-scale": (_identity, _hflip, lambda b: zoom(b, 0.875), lambda b: zoom(b, 1.125)),
}


def check_tta(mode: str) -> str:
    """``mode`` if it is a known TTA mode, else a :class:`ConfigError` naming them."""
    if mode not in TTA_VIEWS:
        raise ConfigError(f"unknown test-time augmentation {mode!r}; use one of "
                          f"{', '.join(TTA_VIEWS)}.")
    return mode


def views(batch: torch.Tensor, mode: str) -> Iterator[torch.Tensor]:
    """The views of ``batch`` for ``mode``, made one at a time; the first is ``batch`` itself."""
    for view in TTA_VIEWS[check_tta(mode)]:
        yield view(batch)


@dataclass
class TtaTiming:
    """Seconds spent on the plain view and on all views (including making them).

    The plain view of each batch is timed on its own, in the same run, so ``slowdown`` compares
    like with like: same images, same machine load, same runtime.
    """

    views: int
    images: int = 0
    plain_seconds: float = 0.0
    total_seconds: float = 0.0
    warmed_up: bool = False

    @property
    def seconds_per_image(self) -> float:
        return self.total_seconds / self.images if self.images else 0.0

    @property
    def plain_seconds_per_image(self) -> float:
        return self.plain_seconds / self.images if self.images else 0.0

    @property
    def slowdown(self) -> float:
        return self.total_seconds / self.plain_seconds if self.plain_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"views": self.views, "seconds_per_image": round(self.seconds_per_image, 6),
                "plain_seconds_per_image": round(self.plain_seconds_per_image, 6),
                "slowdown": round(self.slowdown, 3), "images": self.images}
