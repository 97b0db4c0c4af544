"""Opening one image file robustly and turning it into an 8-bit RGB image.

Everything that makes a single file unusable raises :class:`ImageProblem` with a short reason,
so callers can skip that file and go on; everything that can be fixed on the fly (orientation,
colour mode, bit depth, transparency, animation) is fixed and reported as a conversion.
"""

from __future__ import annotations

import io
import threading
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
"""Images with more pixels than this are refused as possible decompression bombs."""

MIN_SIDE = 8
"""Images with a side shorter than this (in pixels) are refused as too small to classify."""

# Reason kinds: the text before any " (detail)" in ImageProblem.reason.
NOT_FOUND = "file not found"
EMPTY_FILE = "empty file"
NOT_A_FILE = "not a regular file"
UNREADABLE = "unreadable"
NOT_AN_IMAGE = "not an image"
TRUNCATED = "truncated or corrupt"
BOMB = "decompression bomb"
TOO_SMALL = "too small"
UNSUPPORTED_MODE = "unsupported colour mode"

DICOM_HINT = ("a DICOM file: it is read through an intensity window, e.g. `vitkit train "
              "--window soft-tissue`; a model trained without one cannot read it")
_DICOM_PREAMBLE = 128
HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)
# EXIF Orientation value -> the transpose that shows the image upright (as ImageOps uses).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# warnings.catch_warnings swaps a process-wide filter list; two threads entering and leaving it
# interleaved can restore each other's copy and leave the "error" filter installed for good.
# Only the header read happens under the lock, so it costs little.
_WARNINGS_LOCK = threading.Lock()


class ImageProblem(Exception):
    """Why one image file is unusable; the file is skipped, the run goes on.

    Attributes:
        reason: Short human-readable reason, e.g. ``"not an image"`` or
            ``"too small (2x2 px, each side needs at least 8 px)"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def kind(self) -> str:
        """The reason without its parenthesised detail, for grouping counts."""
        return reason_kind(self.reason)


def reason_kind(reason: str) -> str:
    """Strips the parenthesised detail: ``"too small (2x2 px)"`` -> ``"too small"``."""
    return reason.split(" (", 1)[0]


def _problem(kind: str, detail: str = "") -> ImageProblem:
    return ImageProblem(f"{kind} ({detail})" if detail else kind)


def load_rgb(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, list[str]]:
    """Fully decodes an image file into an RGB image ready for transforms.

    Args:
        path: The image file. Its extension is ignored; the content decides.
        max_pixels: Largest accepted width * height, checked before decoding.

    Returns:
        The RGB image (detached from the file) and the conversions applied, in order, e.g.
        ``["exif_orientation", "mode CMYK->RGB"]``; empty when the file was plain RGB.

    Raises:
        ImageProblem: The file is missing, empty, not an image, truncated or corrupt, too
            large (possible decompression bomb) or too small.
    """
    path = Path(path)
    check_file(path)
    return _decode(path, max_pixels)


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> tuple[Image.Image, list[str]]:
    """:func:`load_rgb` for bytes already in memory (an upload), with the same checks.

    Raises:
        ImageProblem: Empty, not an image, truncated or corrupt, too many pixels, too small.
    """
    if not data:
        raise _problem(EMPTY_FILE, "0 bytes")
    return _decode(io.BytesIO(data), max_pixels)


def load_raw(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS,
             conversions: list[str] | None = None) -> Image.Image:
    """:func:`load_rgb`'s checks and decoding (first frame, EXIF orientation) without the colour
    conversion: a mask keeps its mode, so palette indices and 0/255 grey levels stay as written;
    a 16-bit image keeps its depth. What was changed is appended to ``conversions``.

    Raises:
        ImageProblem: As :func:`load_rgb`.
    """
    path = Path(path)
    check_file(path)
    return _decode_frame(path, max_pixels, [] if conversions is None else conversions,
                         rgb=False)


def decode_raw(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
               conversions: list[str] | None = None) -> Image.Image:
    """:func:`load_raw` for bytes already in memory (an upload).

    Raises:
        ImageProblem: As :func:`decode_rgb`.
    """
    if not data:
        raise _problem(EMPTY_FILE, "0 bytes")
    return _decode_frame(io.BytesIO(data), max_pixels,
                         [] if conversions is None else conversions, rgb=False)


def to_rgb(im: Image.Image, conversions: list[str]) -> Image.Image:
    """The colour conversion :func:`load_rgb` applies (appended to ``conversions``): a
    loaded image of any mode as 8-bit RGB.

    Raises:
        ImageProblem: A mode PIL cannot convert to RGB.
    """
    return _to_rgb(im, conversions)


def _decode(source: Path | io.BytesIO, max_pixels: int) -> tuple[Image.Image, list[str]]:
    conversions: list[str] = []
    return _decode_frame(source, max_pixels, conversions, rgb=True), conversions


def _decode_frame(source: Path | io.BytesIO, max_pixels: int, conversions: list[str],
                  rgb: bool) -> Image.Image:
    with _open(source, max_pixels) as im:
        check_size(im.size, max_pixels)
        try:
            n_frames = getattr(im, "n_frames", 1)
            if n_frames > 1:
                im.seek(0)
                conversions.append(f"first frame of {n_frames}")
            im.load()
        except Image.DecompressionBombError as exc:
            raise _problem(BOMB, str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - decoders raise many types for bad data
            raise _problem(TRUNCATED, short_reason(exc)) from exc
        out = _apply_orientation(im, conversions)
        if rgb:
            out = _to_rgb(out, conversions)
        if out is im:
            out = im.copy()  # leaving the `with` block closes `im` and invalidates its pixels
    return out


def check_file(path: Path) -> None:
    """Refuses a missing, unreadable, empty or non-regular file before any decoding."""
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise ImageProblem(NOT_FOUND) from exc
    except OSError as exc:
        raise _problem(UNREADABLE, exc.strerror or type(exc).__name__) from exc
    if not path.is_file():
        raise ImageProblem(NOT_A_FILE)
    if size == 0:
        raise _problem(EMPTY_FILE, "0 bytes")


def _open(path: Path | io.BytesIO, max_pixels: int) -> Image.Image:
    # PIL warns above Image.MAX_IMAGE_PIXELS and raises above twice that. The warning becomes
    # an error here unless the caller explicitly allowed more pixels than PIL does.
    action: Literal["error", "ignore"] = (
        "error" if max_pixels <= (Image.MAX_IMAGE_PIXELS or 0) else "ignore"
    )
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            limit = f"more than PIL's limit of {Image.MAX_IMAGE_PIXELS:,} pixels"
            raise _problem(BOMB, limit) from exc
        except UnidentifiedImageError as exc:
            raise _not_an_image(path) from exc
        except OSError as exc:
            if exc.errno is None:
                # A plugin's complaint about the bytes ("image file is truncated", "Truncated
                # File Read"), not the operating system's about reading the file.
                raise _problem(TRUNCATED, short_reason(exc)) from exc
            raise _problem(UNREADABLE, exc.strerror or short_reason(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - plugins raise many types on bad headers
            raise _problem(TRUNCATED, short_reason(exc)) from exc


def has_dicom_magic(head: bytes) -> bool:
    """Whether ``head`` (a file's first 132 bytes or more) carries the DICOM signature: 128
    free bytes, then ``DICM``."""
    return head[_DICOM_PREAMBLE:_DICOM_PREAMBLE + 4] == b"DICM"


def _not_an_image(source: Path | io.BytesIO) -> ImageProblem:
    """The "not an image" problem, with a hint when it is a DICOM file (PIL reads none)."""
    if isinstance(source, io.BytesIO):
        dicom = has_dicom_magic(source.getbuffer()[:_DICOM_PREAMBLE + 4].tobytes())
    else:
        dicom = source.suffix.lower() in (".dcm", ".dicom")
        if not dicom:
            try:
                with source.open("rb") as handle:
                    dicom = has_dicom_magic(handle.read(_DICOM_PREAMBLE + 4))
            except OSError:
                pass
    return _problem(NOT_AN_IMAGE, DICOM_HINT) if dicom else ImageProblem(NOT_AN_IMAGE)


def check_size(size: tuple[int, int], max_pixels: int) -> None:
    """Refuses a (width, height) over ``max_pixels`` or with a side under :data:`MIN_SIDE`."""
    width, height = size
    if width * height > max_pixels:
        raise _problem(BOMB, f"{width}x{height} px is more than the {max_pixels:,} pixel limit")
    if min(width, height) < MIN_SIDE:
        raise _problem(TOO_SMALL, f"{width}x{height} px, each side needs at least {MIN_SIDE} px")


def short_reason(exc: BaseException, limit: int = 100) -> str:
    """An exception's message cut to ``limit`` characters, for a reason's detail."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _apply_orientation(im: Image.Image, conversions: list[str]) -> Image.Image:
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - broken EXIF only loses orientation, the pixels are fine
        return im
    method = _ORIENTATION_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    if method is None:
        return im
    conversions.append("exif_orientation")
    # Not ImageOps.exif_transpose: after turning the pixels it re-serialises the whole EXIF
    # block, and a malformed tag elsewhere in it raises TypeError, ValueError, AttributeError
    # or struct.error (found by fuzzing, tests/data/test_decode_fuzz.py). Only pixels leave here.
    return im.transpose(method)


def _to_rgb(im: Image.Image, conversions: list[str]) -> Image.Image:
    mode = im.mode
    has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
    if mode == "RGB" and not has_alpha:
        return im
    if mode in HIGH_BIT_DEPTH_MODES:
        conversions.append(f"mode {mode}->RGB")
        return _rescale_to_8bit(im).convert("RGB")
    if has_alpha:
        return _composite_on_white(im, conversions)
    if mode == "L":
        conversions.append("grayscale->RGB")
    else:
        conversions.append(f"mode {mode}->RGB")
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise _problem(UNSUPPORTED_MODE, mode) from exc


def _composite_on_white(im: Image.Image, conversions: list[str]) -> Image.Image:
    rgba = im.convert("RGBA")
    if rgba.getchannel("A").getextrema()[0] == 255:
        # Fully opaque: the alpha channel carries nothing, only the mode changes.
        conversions.append(f"mode {im.mode}->RGB")
        return rgba.convert("RGB")
    if im.mode not in ("RGB", "RGBA"):
        conversions.append(f"mode {im.mode}->RGB")
    conversions.append("alpha composited on white")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _rescale_to_8bit(im: Image.Image) -> Image.Image:
    """Maps the image's actual value range onto 0..255 (a plain convert would clip to white)."""
    raw = np.asarray(im)
    finite = np.isfinite(raw)
    # float64: a float32 image can span -3.4e38..3.4e38, and that difference overflows float32
    # (a RuntimeWarning, an exception under -W error; found by fuzzing the float TIFF seed).
    # Non-finite values are dropped before the cast: a signalling NaN warns when cast.
    values = np.where(finite, raw, 0).astype(np.float64)
    if not finite.any():
        return Image.new("L", im.size, 0)
    low = float(values[finite].min())
    high = float(values[finite].max())
    scale = 255.0 / (high - low) if high > low else 0.0
    scaled = (np.where(finite, values, low) - low) * scale  # NaN and inf become black
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
