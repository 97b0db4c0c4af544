"""Preprocessing and augmentation settings, turned into transforms by timm.

The settings are plain pydantic models so that a bundle can store them as JSON and rebuild
exactly the same evaluation transform later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from timm.data import auto_augment as timm_auto_augment
from timm.data import create_transform
from timm.data.transforms import str_to_interp_mode

from vitkit.bundle import META_FILE, describe_validation_error
from vitkit.errors import BundleError, ConfigError

MAX_INPUT_SIDE = 4096
"""Largest accepted model input side in pixels. timm's largest pretrained inputs are 1024 px;
a bundle edited to ask for 100000 px would make every image a multi-gigabyte tensor."""


class Preprocessing(BaseModel):
    """How a model expects its input: size, resampling, crop and normalisation.

    Attributes:
        input_size: Model input as (height, width).
        interpolation: Resampling filter name understood by timm (e.g. "bicubic", "bilinear").
        mean: Per-channel normalisation mean (RGB, 0..1 scale).
        std: Per-channel normalisation standard deviation.
        crop_pct: Fraction of the resized image kept by the evaluation centre crop.
        crop_mode: timm evaluation crop mode: "center", "squash" or "border".
    """

    # NaN and infinity are refused: no transform can normalise with them.
    model_config = ConfigDict(allow_inf_nan=False)

    input_size: tuple[int, int]
    interpolation: str = "bicubic"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float = 0.875
    crop_mode: str = "center"

    @field_validator("input_size")
    @classmethod
    def _sides_in_range(cls, size: tuple[int, int]) -> tuple[int, int]:
        if not all(1 <= side <= MAX_INPUT_SIDE for side in size):
            raise ValueError(f"each side must be 1 to {MAX_INPUT_SIDE} px, got {size}")
        return size

    @field_validator("std")
    @classmethod
    def _std_not_zero(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(value == 0 for value in std):
            raise ValueError(f"a standard deviation of 0 divides by zero, got {std}")
        return std

    @field_validator("interpolation")
    @classmethod
    def _known_interpolation(cls, name: str) -> str:
        try:
            str_to_interp_mode(name)
        except KeyError:
            raise ValueError(f"unknown interpolation {name!r} (e.g. bicubic, bilinear)") from None
        return name

    @classmethod
    def from_timm_config(cls, cfg: Mapping[str, Any]) -> Preprocessing:
        """Builds the settings from ``timm.data.resolve_data_config(model=...)``'s result.

        Args:
            cfg: Mapping with ``input_size`` as (C, H, W) and optionally ``interpolation``,
                ``mean``, ``std``, ``crop_pct`` and ``crop_mode``.
        """
        defaults = cls.model_fields
        height, width = tuple(cfg["input_size"])[-2:]
        return cls(
            input_size=(int(height), int(width)),
            interpolation=cfg.get("interpolation") or defaults["interpolation"].default,
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            crop_pct=cfg.get("crop_pct") or defaults["crop_pct"].default,
            crop_mode=cfg.get("crop_mode") or defaults["crop_mode"].default,
        )


class Augmentation(BaseModel):
    """Training-time augmentation, passed to timm's ImageNet training transform.

    Attributes:
        hflip: Probability of a horizontal flip.
        vflip: Probability of a vertical flip.
        scale: Area range of the random resized crop.
        ratio: Aspect-ratio range of the random resized crop.
        color_jitter: Colour jitter strength, or None for none. timm ignores it when
            ``auto_augment`` is set.
        auto_augment: timm auto-augment policy string (e.g. "rand-m9-mstd0.5-inc1"), or None.
        re_prob: Random-erasing probability.
    """

    hflip: float = 0.5
    vflip: float = 0.0
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    color_jitter: float | None = 0.4
    auto_augment: str | None = None
    re_prob: float = 0.0

    model_config = ConfigDict(extra="forbid")


def bundle_preprocessing(raw: Mapping[str, Any], bundle: Any = "") -> Preprocessing:
    """A bundle's ``preprocessing`` record, validated; an edited record is a BundleError
    naming the file and the fix, never a raw validation error at the first prediction."""
    try:
        return Preprocessing.model_validate(raw)
    except ValidationError as exc:
        where = f"{bundle}/{META_FILE}" if bundle else META_FILE
        raise BundleError(
            f"{where}: preprocessing is not usable: {describe_validation_error(exc)}. Restore "
            f"{META_FILE} from a copy of the bundle, or train again."
        ) from exc


def eval_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """The deterministic evaluation transform: resize, centre crop, to tensor, normalise."""
    return create_transform(
        input_size=pre.input_size,
        is_training=False,
        interpolation=pre.interpolation,
        mean=pre.mean,
        std=pre.std,
        crop_pct=pre.crop_pct,
        crop_mode=pre.crop_mode,
    )


def _posterize_at_least_one_bit(img: Image.Image, bits_to_keep: int, **kwargs: Any
                                ) -> Image.Image:
    return timm_auto_augment.posterize(img, max(1, bits_to_keep), **kwargs)


def keep_one_posterize_bit(transform: Callable[[Image.Image], torch.Tensor]) -> int:
    """Makes the Posterize steps of a timm training transform keep at least one bit; returns
    how many steps it changed.

    timm's RandAugment levels can ask Posterize to keep 0 bits (``Posterize`` and
    ``PosterizeIncreasing`` at high magnitudes), which Pillow >= 11 rejects with a ValueError
    in the middle of training; keeping 1 bit gives the same near-black image. The change is
    made on the ops of this transform only: timm's own table (``NAME_TO_OP``) is left as it
    is, so importing vitkit never changes what timm does elsewhere.
    """
    changed = 0
    for step in getattr(transform, "transforms", [transform]):
        ops = list(getattr(step, "ops", []))  # RandAugment, AugMix
        for sub_policy in getattr(step, "policy", []):  # AutoAugment: lists of ops
            ops.extend(sub_policy)
        for op in ops:
            if getattr(op, "aug_fn", None) is timm_auto_augment.posterize:
                op.aug_fn = _posterize_at_least_one_bit
                changed += 1
    return changed


def train_transform(pre: Preprocessing, aug: Augmentation) -> Callable[[Image.Image], torch.Tensor]:
    """The random training transform: timm's random resized crop, flips and augmentation.

    Raises:
        ConfigError: timm rejects the augmentation settings (e.g. a bad auto-augment string).
    """
    try:
        transform = create_transform(
            input_size=pre.input_size,
            is_training=True,
            interpolation=pre.interpolation,
            mean=pre.mean,
            std=pre.std,
            scale=aug.scale,
            ratio=aug.ratio,
            hflip=aug.hflip,
            vflip=aug.vflip,
            color_jitter=aug.color_jitter,  # type: ignore[arg-type]  # timm accepts None
            auto_augment=aug.auto_augment or None,
            re_prob=aug.re_prob,
        )
    # timm validates policy strings with asserts and dictionary lookups.
    except (AssertionError, KeyError, ValueError) as exc:
        raise ConfigError(
            f"invalid augmentation settings ({exc!r}); check auto_augment "
            f"{aug.auto_augment!r} (e.g. 'rand-m9-mstd0.5-inc1', 'augmix-m5', 'v0' or none)."
        ) from exc
    keep_one_posterize_bit(transform)
    return transform
