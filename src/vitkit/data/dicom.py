"""Reading a greyscale DICOM image as its modality values (Hounsfield units for CT).

The stored pixels become ``value * RescaleSlope + RescaleIntercept`` (or the Modality LUT
when the file has one), in float64 and at full depth: windowing (:mod:`vitkit.data.intensity`)
happens on these values, never on an 8-bit rendering. Only the first frame of a multi-frame
file is read. Everything that makes a file unusable raises
:class:`~vitkit.data.images.ImageProblem`, so a folder scan skips and reports it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import numpy as np

from vitkit.data.images import (
    TRUNCATED,
    ImageProblem,
    check_size,
    has_dicom_magic,
    short_reason,
)
from vitkit.errors import ConfigError

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
MEDICAL_EXTRA = "pip install 'vitkit[medical]'"

# Reason kinds (see vitkit.data.images): the text before any " (detail)".
NO_PIXEL_DATA = "no pixel data"
COLOUR_DICOM = "colour DICOM"
UNDECODABLE = "undecodable pixel data"

_HEAD_BYTES = 132  # 128 free bytes, then "DICM"
_GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass
class DicomPixels:
    """The first frame of a DICOM image.

    Attributes:
        values: (H, W) float64 modality values: HU for CT, the stored values when the file
            has no rescale.
        inverted: MONOCHROME1: the lowest value is shown white, so a rendering is flipped
            after windowing (the window itself stays in modality units, as the DICOM
            standard's VOI LUT does).
        conversions: What was changed on the way, e.g. ``["first frame of 2"]``.
    """

    values: np.ndarray
    inverted: bool
    conversions: list[str] = field(default_factory=list)


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` / ``.dicom`` file, or any file with the DICOM signature (many scanners
    write files without an extension)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            return has_dicom_magic(handle.read(_HEAD_BYTES))
    except OSError:
        return False


def require_pydicom() -> ModuleType:
    """pydicom, or a clear error naming the extra that brings it."""
    try:
        import pydicom
    except ImportError as exc:
        raise ConfigError(f"reading DICOM files and intensity windows need pydicom, which is "
                          f"not installed: {MEDICAL_EXTRA}.") from exc
    return pydicom


def read_dicom(source: Path | bytes, max_pixels: int) -> DicomPixels:
    """The first frame of a greyscale DICOM file (a path) or upload (bytes).

    Raises:
        ImageProblem: Not a readable DICOM file, no pixel data, a colour image, a size out of
            bounds (see :func:`~vitkit.data.images.check_size`), or pixel data no installed
            decoder reads (the reason names the plugin pydicom asks for).
        ConfigError: pydicom is not installed.
    """
    pydicom = require_pydicom()
    with _binary(source) as handle:
        magic = has_dicom_magic(handle.read(_HEAD_BYTES))
        handle.seek(0)
        try:
            # force: a file named .dcm without the 128-byte preamble (older writers) still
            # reads; defer_size: the pixel data stays on disk until a frame is decoded
            dataset = pydicom.dcmread(handle, force=not magic, defer_size="64 KB")
            keyword = next((k for k in _PIXEL_KEYWORDS if k in dataset), None)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files
            raise ImageProblem(f"{TRUNCATED} (DICOM: {short_reason(exc)})") from exc
        if keyword is None:
            raise ImageProblem(f"{NO_PIXEL_DATA} (a DICOM file without an image, e.g. a "
                               "structured report or a series header)")
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if photometric not in _GREYSCALE:
            raise ImageProblem(f"{COLOUR_DICOM} (PhotometricInterpretation {photometric}; "
                               "windows apply to greyscale images: CT, MR, CR, DX)")
        try:
            rows, columns = int(dataset.Rows), int(dataset.Columns)
            frames = int(dataset.get("NumberOfFrames") or 1)
        except (AttributeError, TypeError, ValueError) as exc:
            raise ImageProblem(f"{TRUNCATED} (DICOM: no valid Rows/Columns)") from exc
        check_size((columns, rows), max_pixels)
        index = 0 if frames > 1 else None
        try:
            # from the file itself, pydicom reads just the frame asked for, not a whole
            # multi-frame volume
            handle.seek(0)
            stored = pydicom.pixels.pixel_array(handle if magic else dataset, index=index)
        except Exception:  # noqa: BLE001 - missing plugins, short data, bad encodings
            stored = _decoded_or_why(pydicom, dataset, index)
        if stored.ndim != 2:
            raise ImageProblem(f"{COLOUR_DICOM} (pixel array of shape {stored.shape})")
        values = _modality_values(pydicom, stored, dataset)  # a deferred LUT reads the file
    conversions = [f"first frame of {frames}"] if frames > 1 else []
    return DicomPixels(values, photometric == "MONOCHROME1", conversions)


def _decoded_or_why(pydicom: ModuleType, dataset: Any, index: int | None) -> np.ndarray:
    """The frame decoded from the whole dataset, or why not in pydicom's words: read that way
    it says what is wrong ("less than expected", the plugins that would decode it), where
    the frame-by-frame reading only fails to reshape."""
    try:
        return pydicom.pixels.pixel_array(dataset, index=index)
    except Exception as exc:  # noqa: BLE001 - missing plugins, short data, bad encodings
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ImageProblem(f"{UNDECODABLE} ({detail[:300]})") from exc


@contextmanager
def _binary(source: Path | bytes) -> Iterator[BinaryIO]:
    if isinstance(source, bytes):
        yield io.BytesIO(source)
        return
    try:
        handle = source.open("rb")
    except OSError as exc:
        raise ImageProblem(f"unreadable ({exc.strerror or type(exc).__name__})") from exc
    with handle:
        yield handle


def _modality_values(pydicom: ModuleType, stored: np.ndarray, dataset: Any) -> np.ndarray:
    """``stored * RescaleSlope + RescaleIntercept`` (or the Modality LUT) as float64."""
    if dataset.get("ModalityLUTSequence"):
        mapped = pydicom.pixels.apply_modality_lut(stored, dataset)
        return np.asarray(mapped, dtype=np.float64)
    slope, intercept = _rescale(dataset)
    return stored.astype(np.float64) * slope + intercept


def _rescale(dataset: Any) -> tuple[float, float]:
    """(slope, intercept): the dataset's own, else an enhanced multi-frame file's shared or
    first per-frame Pixel Value Transformation, else (1, 0)."""
    holders = [dataset]
    for sequence in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = dataset.get(sequence)
        if groups:
            holders += list(groups[0].get("PixelValueTransformationSequence") or [])
    for holder in holders:
        if "RescaleSlope" in holder and "RescaleIntercept" in holder:
            try:
                return float(holder.RescaleSlope), float(holder.RescaleIntercept)
            except (TypeError, ValueError) as exc:
                raise ImageProblem(f"{TRUNCATED} (DICOM: RescaleSlope "
                                   f"{holder.RescaleSlope!r} or RescaleIntercept "
                                   f"{holder.RescaleIntercept!r} is not a number)") from exc
    return 1.0, 0.0
