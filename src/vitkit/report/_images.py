"""Images as base64 data URIs, so the report is one self-contained file."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image, ImageOps

THUMBNAIL_SIZE = 160


def data_uri(data: bytes, mime: str) -> str:
    """Return ``data`` as a ``data:`` URI."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def is_png(data: bytes) -> bool:
    """Whether ``data`` decodes as a PNG image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                return False
            image.verify()
    except Exception:  # PIL raises many types for corrupt files
        return False
    return True


def thumbnail(path: Path, size: int = THUMBNAIL_SIZE) -> tuple[str, int, int] | None:
    """Read an image file and return ``(jpeg_data_uri, width, height)`` of its thumbnail.

    Args:
        path: Image file.
        size: Longest side of the thumbnail in pixels.

    Returns:
        The thumbnail, or ``None`` when the file is missing or cannot be decoded.
    """
    try:
        with Image.open(path) as source:
            # draft() lets the JPEG decoder downscale while decoding: much faster on photos.
            source.draft("RGB", (size * 2, size * 2))
            image = ImageOps.exif_transpose(source).convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
    except Exception:  # a bad image must show a placeholder, never crash
        return None
    return data_uri(buffer.getvalue(), "image/jpeg"), image.width, image.height
