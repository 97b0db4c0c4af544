"""Intensity windows and CLAHE: medical and hard-contrast images as the model's RGB input.

A window with level ``L`` and width ``W`` maps a value ``v`` to
``clip((v - (L - W/2)) / W, 0, 1)``: ``L - W/2`` and below is black, ``L + W/2`` and above
white. Values are read at full depth, never from an 8-bit rendering: Hounsfield units of a
DICOM file (:mod:`vitkit.data.dicom`), the stored numbers of a 16-bit or 32-bit PNG / TIFF,
0..255 of an 8-bit grey image. One window fills all three channels; two fill the first two
and their mean the third (it adds nothing new and keeps the third channel in the same range
as the others); three fill one channel each. The windowed image is rendered to 8 bits per
channel (what the model's transforms take); CLAHE (OpenCV) then equalises each channel.

The :class:`IntensitySpec` is recorded in the bundle (``vitkit.json`` key ``intensity``), and
every path that opens an image for a classifier (train, eval, predict, the Predictor, the
service) reads it from there, so all apply the same.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vitkit.bundle import META_FILE, BundleMeta, describe_validation_error
from vitkit.data.dicom import MEDICAL_EXTRA, is_dicom_file, read_dicom, require_pydicom
from vitkit.data.images import (
    DEFAULT_MAX_PIXELS,
    EMPTY_FILE,
    HIGH_BIT_DEPTH_MODES,
    ImageProblem,
    check_file,
    decode_raw,
    decode_rgb,
    has_dicom_magic,
    load_raw,
    load_rgb,
    to_rgb,
)
from vitkit.errors import BundleError, ConfigError

BUNDLE_KEY = "intensity"
"""The key of ``vitkit.json`` that records the spec."""

PRESETS: dict[str, tuple[float, float]] = {
    # (level, width) in Hounsfield units, as Radiopaedia's "Windowing (CT)" lists them
    # (soft tissue: the 40/400 of the guide the issue quotes, inside its 20-60 / 350-400).
    "brain": (40.0, 80.0),
    "soft-tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}
MAX_WINDOWS = 3  # one per RGB channel

COLOUR_IMAGE = "colour image"  # a reason kind, as those of vitkit.data.images

_RENDERED_KEY = "vitkit.intensity"  # PIL info key: an upload rendered per spec (serve)


def parse_window(text: str) -> tuple[float, float]:
    """``"40:400"`` (level:width) or a preset name (``"lung"``) as ``(level, width)``.

    Raises:
        ValueError: Neither; the message lists the presets (a close name is suggested).
    """
    name = text.strip().lower().replace("_", "-")
    if name in PRESETS:
        return PRESETS[name]
    level, sep, width = name.partition(":")
    try:
        if sep:
            return float(level), float(width)
    except ValueError:
        pass
    close = difflib.get_close_matches(name, PRESETS, n=1)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown window {text!r}. {hint}Give LEVEL:WIDTH (e.g. 40:400, in the "
                     f"image's units: Hounsfield units for CT) or a preset: {describe_presets()}")


def describe_presets() -> str:
    """``brain (40:80), soft-tissue (40:400), …``."""
    return ", ".join(f"{name} ({_number(lv)}:{_number(w)})" for name, (lv, w) in PRESETS.items())


def _number(value: float) -> str:
    return f"{value:g}"


class Clahe(BaseModel):
    """Contrast-limited adaptive histogram equalisation (OpenCV's ``createCLAHE``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    clip: float = Field(2.0, gt=0, description="contrast limit (OpenCV's clipLimit)")
    tiles: int = Field(8, ge=1, le=64, description="tiles per side (OpenCV's tileGridSize)")

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        """``"2.0:8"`` (clip:tiles, as ``--clahe`` takes it) or ``"2.0"`` (8 tiles)."""
        if not isinstance(value, str):
            return value
        clip, _, tiles = value.partition(":")
        try:
            return {"clip": float(clip), **({"tiles": int(tiles)} if tiles else {})}
        except ValueError:
            raise ValueError(f"CLAHE {value!r} is not CLIP:TILES, e.g. 2.0:8") from None


class IntensitySpec(BaseModel):
    """How to turn a medical or hard-contrast image into the model's RGB input.

    Attributes:
        windows: (level, width) pairs, at most three, in the image's own units. Given as
            ``"40:400"``, a preset name or a pair.
        clahe: Equalisation after windowing; None: off.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    windows: tuple[tuple[float, float], ...] = ()
    clahe: Clahe | None = None

    @field_validator("windows", mode="before")
    @classmethod
    def _parse_windows(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple):
            return [parse_window(item) if isinstance(item, str) else item for item in value]
        return value

    @field_validator("windows")
    @classmethod
    def _check_windows(cls, windows: tuple[tuple[float, float], ...]
                       ) -> tuple[tuple[float, float], ...]:
        if len(windows) > MAX_WINDOWS:
            raise ValueError(f"{len(windows)} windows given; at most {MAX_WINDOWS} (one per "
                             "RGB channel)")
        narrow = [f"{_number(lv)}:{_number(w)}" for lv, w in windows if w <= 0]
        if narrow:
            raise ValueError(f"a window's width must be above 0: {', '.join(narrow)}")
        return windows

    @model_validator(mode="after")
    def _something(self) -> IntensitySpec:
        if not self.windows and self.clahe is None:
            raise ValueError("give at least one window or CLAHE (or no intensity at all)")
        return self

    def describe(self) -> str:
        """``"windows 40:400, -600:1500; CLAHE clip 2 on 8x8 tiles"``."""
        parts = []
        if self.windows:
            parts.append("window" + ("s " if len(self.windows) > 1 else " ") + ", ".join(
                f"{_number(lv)}:{_number(w)}" for lv, w in self.windows))
        if self.clahe is not None:
            parts.append(f"CLAHE clip {_number(self.clahe.clip)} on "
                         f"{self.clahe.tiles}x{self.clahe.tiles} tiles")
        return "; ".join(parts)


def require_medical() -> None:
    """pydicom and OpenCV, or one clear error naming the extra that brings both."""
    require_pydicom()
    _cv2()


def _cv2() -> ModuleType:
    try:
        import cv2
    except ImportError as exc:
        raise ConfigError(f"CLAHE needs OpenCV, which is not installed: {MEDICAL_EXTRA}."
                          ) from exc
    return cv2


def bundle_intensity(meta: BundleMeta, path: Path | str = "") -> IntensitySpec | None:
    """The spec recorded in a bundle, or None for a bundle that reads plain RGB.

    Raises:
        BundleError: The record is damaged.
    """
    record = (meta.model_extra or {}).get(BUNDLE_KEY)
    if record is None:
        return None
    try:
        return IntensitySpec.model_validate(record)
    except ValidationError as exc:
        raise BundleError(f"{path or 'the bundle'}/{META_FILE}: '{BUNDLE_KEY}' is damaged "
                          f"({describe_validation_error(exc)}). Restore {META_FILE} from a "
                          "copy of the bundle, or train again.") from exc


# ---------------------------------------------------------------------------- the math
def window(values: np.ndarray, level: float, width: float) -> np.ndarray:
    """``clip((values - (level - width/2)) / width, 0, 1)`` in float64."""
    low = level - width / 2
    return np.clip((np.asarray(values, dtype=np.float64) - low) / width, 0.0, 1.0)


def windowed_channels(values: np.ndarray, windows: Sequence[tuple[float, float]]
                      ) -> np.ndarray:
    """(H, W) values as (H, W, 3) in [0, 1], one window per channel (see the module doc)."""
    channels = [window(values, level, width) for level, width in windows]
    if len(channels) == 1:
        channels *= 3
    elif len(channels) == 2:
        channels.append((channels[0] + channels[1]) / 2)
    return np.stack(channels, axis=-1)


def stretched(values: np.ndarray) -> np.ndarray:
    """Values mapped min..max onto [0, 1] (no window given), as 16-bit images are without
    one; a flat image becomes 0."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.float64)
    low, high = float(values[finite].min()), float(values[finite].max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    return np.clip((np.where(finite, values, low) - low) / (high - low), 0.0, 1.0)


def to_8bit(unit: np.ndarray) -> np.ndarray:
    """[0, 1] as 0..255 (rounded to nearest)."""
    return np.rint(unit * 255.0).astype(np.uint8)


def equalize(rgb: np.ndarray, clahe: Clahe) -> np.ndarray:
    """OpenCV CLAHE on each channel of an (H, W, 3) uint8 image."""
    cv2 = _cv2()
    operator = cv2.createCLAHE(clipLimit=clahe.clip, tileGridSize=(clahe.tiles, clahe.tiles))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
        grey = operator.apply(np.ascontiguousarray(rgb[..., 0]))  # one window: once, not 3x
        return np.repeat(grey[..., None], 3, axis=2)
    return np.stack([operator.apply(np.ascontiguousarray(rgb[..., c])) for c in range(3)],
                    axis=-1)


def render(values: np.ndarray, spec: IntensitySpec, inverted: bool = False) -> Image.Image:
    """(H, W) full-depth values as the RGB image the model's transforms take: the windows
    (or min..max when none), flipped for MONOCHROME1 (``inverted``), 8 bits, then CLAHE."""
    values = np.where(np.isnan(values), -np.inf, values)  # NaN (a float TIFF) reads as black
    if spec.windows:
        unit = windowed_channels(values, spec.windows)
    else:
        unit = np.repeat(stretched(values)[..., None], 3, axis=2)
    if inverted:
        unit = 1.0 - unit
    pixels = to_8bit(unit)
    if spec.clahe is not None:
        pixels = equalize(pixels, spec.clahe)
    return Image.fromarray(pixels, mode="RGB")


# ---------------------------------------------------------------------------- loading
def load_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS,
               intensity: IntensitySpec | None = None) -> tuple[Image.Image, list[str]]:
    """:func:`~vitkit.data.images.load_rgb`, or with a spec the image read at full depth
    (DICOM included) and rendered by it.

    Returns:
        The RGB image and the conversions applied (e.g. ``["first frame of 2"]``).

    Raises:
        ImageProblem: As :func:`load_rgb`; with a spec also a colour image under a window, a
            DICOM file without pixel data, in colour or with pixel data no decoder reads.
    """
    if intensity is None:
        return load_rgb(path, max_pixels)
    path = Path(path)
    check_file(path)
    conversions: list[str] = []
    if is_dicom_file(path):
        pixels = read_dicom(path, max_pixels)
        return render(pixels.values, intensity, pixels.inverted), pixels.conversions
    image = load_raw(path, max_pixels, conversions)
    return apply_to_image(image, intensity, conversions), conversions


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 intensity: IntensitySpec | None = None) -> tuple[Image.Image, list[str]]:
    """:func:`load_image` for bytes in memory (an upload); a DICOM upload is known by its
    signature (``DICM`` after 128 bytes).

    Raises:
        ImageProblem: As :func:`load_image`.
    """
    if intensity is None:
        return decode_rgb(data, max_pixels)
    if not data:
        raise ImageProblem(f"{EMPTY_FILE} (0 bytes)")
    if has_dicom_magic(data[:132]):
        pixels = read_dicom(data, max_pixels)
        return render(pixels.values, intensity, pixels.inverted), pixels.conversions
    conversions: list[str] = []
    image = decode_raw(data, max_pixels, conversions)
    return apply_to_image(image, intensity, conversions), conversions


def apply_to_image(image: Image.Image, intensity: IntensitySpec,
                   conversions: list[str] | None = None) -> Image.Image:
    """An image already decoded (any PIL mode; 16-bit and float kept as they are) rendered by
    the spec. Without windows it is converted as :func:`load_rgb` does, then equalised.

    Raises:
        ImageProblem: A colour image under a window (a window reads one grey channel).
    """
    conversions = [] if conversions is None else conversions
    if not intensity.windows:
        rgb = np.asarray(to_rgb(image, conversions))
        return Image.fromarray(equalize(rgb, intensity.clahe) if intensity.clahe else rgb,
                               mode="RGB")
    return render(grey_values(image, conversions), intensity)


def grey_values(image: Image.Image, conversions: list[str]) -> np.ndarray:
    """(H, W) float64 values of a grey image at its full depth: 16-bit and 32-bit integers
    and floats as stored, 8-bit as 0..255; an RGB image whose channels are equal (grey saved
    as colour) reads as its first channel.

    Raises:
        ImageProblem: A colour image.
    """
    if image.mode in HIGH_BIT_DEPTH_MODES or image.mode == "L":
        return np.asarray(image, dtype=np.float64)
    mode = image.mode
    rgb = np.asarray(to_rgb(image, conversions))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
        return rgb[..., 0].astype(np.float64)
    raise ImageProblem(f"{COLOUR_IMAGE} (mode {mode} with differing channels; a window "
                       "reads one grey channel: give greyscale images, or train without "
                       "--window)")


# ---------------------------------------------------------------------------- serving
def decode_upload(data: bytes, specs: Iterable[IntensitySpec],
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An upload for a service whose models read through ``specs``: decoded once per spec
    (so a file that a model cannot read is refused at the door, not inside the model), the
    renderings kept on the returned image for :func:`rendered_for`. The image itself is the
    plain RGB decoding, or for a DICOM upload (PIL reads none) the first rendering.

    Raises:
        ImageProblem: As :func:`decode_image` for any of the specs.
    """
    rendered = {spec: decode_image(data, max_pixels, spec)[0] for spec in dict.fromkeys(specs)}
    if not rendered:
        return decode_rgb(data, max_pixels)[0]
    if has_dicom_magic(data[:132]):
        # not decode_rgb: a DICOM file's preamble may hold a TIFF header PIL would open
        image = next(iter(rendered.values())).copy()
    else:
        image = decode_rgb(data, max_pixels)[0]
    image.info[_RENDERED_KEY] = rendered
    return image


def rendered_for(image: Image.Image, spec: IntensitySpec) -> Image.Image:
    """The rendering :func:`decode_upload` kept for ``spec``, else the spec applied to the
    image itself (a model loaded after the upload was decoded; the warm-up's grey image)."""
    kept = image.info.get(_RENDERED_KEY)
    if isinstance(kept, dict) and isinstance(kept.get(spec), Image.Image):
        return kept[spec]
    return apply_to_image(image, spec)
