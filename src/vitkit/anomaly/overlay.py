"""Anomaly maps drawn over their images, as PIL images or PNG bytes.

The caller picks the colour range: passing the same threshold-based ``(vmin, vmax)`` for
every image (for example a ``ScoreScale``'s ``low`` and ``high``) keeps colours comparable
across images, whereas a per-image min/max would paint every image's least normal spot red.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from vitkit.atomic import write_bytes_atomic

# Contour line half-width in pixels per this many pixels of the shorter image side, so the
# outline stays visible on large images.
_CONTOUR_PIXELS_PER_WIDTH = 256


def heatmap_overlay(image: Image.Image, amap: np.ndarray, vmin: float, vmax: float,
                    alpha: float = 0.5, cmap: str = "jet", *, threshold: float | None = None,
                    contour_color: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Blend a colour-mapped anomaly map over an image.

    Args:
        image: The picture the map belongs to (any PIL mode; converted to RGB).
        amap: ``(H, W)`` anomaly map; bilinearly resized to the image if the sizes differ.
        vmin: Map value drawn with the colormap's lowest colour (and anything below it).
        vmax: Map value drawn with its highest colour (and anything above it).
        alpha: Weight of the heat map in the blend, in ``[0, 1]``.
        cmap: A matplotlib colormap name.
        threshold: If given, outline the region where ``amap >= threshold``.
        contour_color: RGB colour of that outline.

    Returns:
        An RGB image of the same size as ``image``.

    Raises:
        ValueError: If the map is not 2-D and finite, ``vmin >= vmax``, ``alpha`` is outside
            ``[0, 1]`` or ``cmap`` is unknown.
    """
    lut = _colormap_lut(cmap)
    values = _check_map(amap)
    vmin, vmax = _check_range(vmin, vmax)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = image.convert("RGB")
    values = _resize_map(values, rgb.size)
    levels = np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
    heat = lut[np.rint(levels * (len(lut) - 1)).astype(np.intp)]
    blended = (1.0 - alpha) * np.asarray(rgb, dtype=np.float32) + alpha * heat
    pixels = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if threshold is not None:
        outline = _outline(values >= float(threshold))
        pixels[outline] = np.asarray(contour_color, dtype=np.uint8)
    return Image.fromarray(pixels)


def png_bytes(image: Image.Image) -> bytes:
    """Encode ``image`` as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_png_atomic(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` as a PNG file via a temporary file and ``os.replace``.

    Readers never see a half-written file; the parent folder is created if needed.

    Returns:
        The path written.
    """
    return write_bytes_atomic(Path(path), png_bytes(image))


def _colormap_lut(name: str) -> np.ndarray:
    """``(256, 3)`` float32 RGB table of a matplotlib colormap, values 0..255."""
    try:
        colormap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}; use a matplotlib name such as 'jet', "
                         "'inferno' or 'viridis'") from None
    return (colormap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.float32)


def _check_map(amap: np.ndarray) -> np.ndarray:
    if hasattr(amap, "detach"):  # a torch tensor, possibly on a GPU
        amap = amap.detach().cpu().numpy()  # type: ignore[union-attr]
    values = np.asarray(amap)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"amap must have shape (H, W), got {values.shape}; "
                         "squeeze the batch dimension")
    if values.dtype == bool or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"amap must hold real numbers, got dtype {values.dtype}")
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError("amap contains NaN or infinite values")
    return values


def _check_range(vmin: float, vmax: float) -> tuple[float, float]:
    low, high = float(vmin), float(vmax)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"need finite vmin < vmax for the colour range, got {vmin}, {vmax}")
    return low, high


def _resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 map to PIL ``size = (width, height)``."""
    if values.shape == (size[1], size[0]):
        return values
    resized = Image.fromarray(values).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _outline(region: np.ndarray) -> np.ndarray:
    """Pixels on the inner border of ``region``, thickened on large images."""
    padded = np.pad(region, 1, mode="edge")  # no outline along the image border
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    border = region & ~interior
    half_width = min(region.shape) // _CONTOUR_PIXELS_PER_WIDTH
    return _dilate(border, half_width) if half_width else border


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow ``mask`` by a ``(2 * radius + 1)`` square, one axis at a time."""
    height, width = mask.shape
    tall = np.pad(mask, ((radius, radius), (0, 0)))
    grown = np.zeros_like(mask)
    for offset in range(2 * radius + 1):
        grown |= tall[offset : offset + height]
    wide = np.pad(grown, ((0, 0), (radius, radius)))
    grown = np.zeros_like(mask)
    for offset in range(2 * radius + 1):
        grown |= wide[:, offset : offset + width]
    return grown
