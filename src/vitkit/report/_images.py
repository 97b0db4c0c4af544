"""Images as base64 data URIs, so the report is one self-contained file."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
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


def reencoded_thumbnail(data: bytes, size: int = THUMBNAIL_SIZE) -> str:
    """An image given as bytes (e.g. a PNG overlay) as a small JPEG ``data:`` URI: a report
    of hundreds of cards stays a few megabytes."""
    with Image.open(io.BytesIO(data)) as source:
        image = source.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82)
    return data_uri(buffer.getvalue(), "image/jpeg")


def resolve_image(path: str | Path, roots: Sequence[Path]) -> Path:
    """``path`` when absolute, else under the first of ``roots`` that holds it, else as given
    (a relative path that exists nowhere: the report says "not found")."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    return next((root / candidate for root in roots if (root / candidate).is_file()), candidate)


def thumbnail_html(path: Path, alt: str, what: str = "image") -> str:
    """An ``<img>`` of the file's thumbnail, or a placeholder that says why there is none."""
    thumb = thumbnail(path, THUMBNAIL_SIZE)
    if thumb is None:
        reason = f"{what} unreadable" if path.is_file() else f"{what} not found"
        return f'<div class="placeholder" role="img" aria-label="{reason}">{reason}</div>'
    uri, width, height = thumb
    return (f'<img src="{uri}" width="{width}" height="{height}" '
            f'alt="{html.escape(alt, quote=True)}">')


def png_thumbnail(data: bytes, size: int = THUMBNAIL_SIZE) -> str:
    """An image given as bytes as a small PNG ``data:`` URI (masks and drawn boxes keep
    their hard edges, which JPEG would blur)."""
    with Image.open(io.BytesIO(data)) as source:
        image = source.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return data_uri(buffer.getvalue(), "image/png")
