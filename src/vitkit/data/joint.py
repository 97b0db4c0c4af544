"""Transforms that move an image and its mask or boxes together (torchvision ``transforms.v2``).

v2 transforms dispatch on the tensor's type: a ``tv_tensors.Mask`` is resized and turned with
nearest-neighbour sampling (class indices are never blended), ``tv_tensors.BoundingBoxes``
are moved with the pixels, and colour changes touch only the ``tv_tensors.Image``. So one
pipeline serves segmentation and detection; detection adds clamping and sanitising of boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class JointAugmentation(BaseModel):
    """Training augmentation for images with masks or boxes: small and geometry-safe.

    Attributes:
        hflip: Probability of a horizontal flip.
        vflip: Probability of a vertical flip (off by default: most scenes have an up).
        degrees: Largest rotation either way, in degrees.
        translate: Largest shift, as a fraction of the width and of the height.
        scale: Range of the random zoom.
        color_jitter: Brightness, contrast and saturation change (0.2: ±20 %).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.0, ge=0, le=1)
    degrees: float = Field(10.0, ge=0, le=180)
    translate: float = Field(0.05, ge=0, le=1)
    scale: tuple[float, float] = (0.9, 1.1)
    color_jitter: float = Field(0.2, ge=0, le=1)

    @field_validator("scale")
    @classmethod
    def _ordered(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
        return scale


def joint_transform(size: int | tuple[int, int] | None, train: bool,
                    augment: JointAugmentation | None = None,
                    mean: Sequence[float] | None = IMAGENET_MEAN,
                    std: Sequence[float] | None = IMAGENET_STD,
                    boxes: bool = False) -> v2.Compose:
    """The transform for ``(tv_tensors.Image, tv_tensors.Mask)`` or ``(tv_tensors.Image,
    {"boxes": tv_tensors.BoundingBoxes, "labels": …})``.

    Order: flips and the affine on the full image (so nothing is cut before it turns), resize
    to ``size`` (height, width; an int gives a square; ``None`` keeps the size), colour jitter,
    float 0..1, normalisation. Pixels the affine brings in are black in the image and
    background (0) in the mask.

    Args:
        size: Output (height, width), or one side for a square, or ``None``.
        train: Add ``augment``'s random flips, affine and colour jitter.
        augment: The augmentation when ``train``; default :class:`JointAugmentation()`.
        mean: Normalisation mean, or ``None`` for plain 0..1 floats (torchvision's detection
            models normalise inside).
        std: Normalisation standard deviation, with ``mean``.
        boxes: Clamp boxes to the image and drop those that shrank below 1 px with their
            labels (``SanitizeBoundingBoxes`` reads the target's ``labels``).
    """
    aug = (augment or JointAugmentation()) if train else None
    steps: list[v2.Transform] = []
    if aug is not None and aug.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug is not None and aug.vflip > 0:
        steps.append(v2.RandomVerticalFlip(aug.vflip))
    if aug is not None and (aug.degrees > 0 or aug.translate > 0 or aug.scale != (1.0, 1.0)):
        steps.append(v2.RandomAffine(
            degrees=aug.degrees, translate=(aug.translate, aug.translate), scale=aug.scale,
            fill={tv_tensors.Image: 0, tv_tensors.Mask: 0, "others": 0}))
    if size is not None:
        steps.append(v2.Resize((size, size) if isinstance(size, int) else tuple(size),
                               antialias=True))
    if aug is not None and aug.color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=aug.color_jitter, contrast=aug.color_jitter,
                                    saturation=aug.color_jitter))
    if boxes:
        steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0)]
    # Only the image becomes float; masks stay int64 and boxes keep their float coordinates.
    steps.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    if mean is not None and std is not None:
        steps.append(v2.Normalize(list(mean), list(std)))
    return v2.Compose(steps)
