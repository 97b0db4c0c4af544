"""Seeded generators of dark, mildly noisy canvases with tiny pasted defects.

The scenario from issue 3: a uniform dark background (level 20-40, Gaussian pixel noise, a mild
illumination gradient) on which a defect is a handful of pixels: a 3-pixel white dot, a thin
scratch, a few small coloured dots. Every generator is deterministic for a given seed and every
defect comes with its boolean mask (H, W), True on the changed pixels.

Import from tests as ``from tests.anomaly.canvas import normal_canvas, with_dot`` (run pytest as
``python -m pytest`` from the repository root), or use the ``canvasgen`` fixture of
``tests/anomaly/conftest.py``.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

CANVAS_SIZE = (1024, 768)  # PIL (width, height)
LEVEL_RANGE = (20.0, 40.0)  # background grey level, drawn once per image
NOISE_SIGMA = 7.0  # per-pixel, per-channel Gaussian noise (grey levels)
GRADIENT = 8.0  # largest illumination swing, +- levels from the centre to a corner
TINT = 2.0  # per-image colour cast of the background, +- levels per channel
BLUE = (0, 0, 255)

# Distinct streams so that, e.g., normal_canvas(3) and with_dot(..., seed=3) are unrelated.
_CANVAS, _DOT, _LINE, _COLOURED = 11, 23, 37, 41
_BLOCK = 10_000  # seeds per set of a scenario

Paste = Callable[[Image.Image, int], tuple[Image.Image, np.ndarray]]


def normal_canvas(
    seed: int,
    size: tuple[int, int] = CANVAS_SIZE,
    noise: float = NOISE_SIGMA,
    gradient: float = GRADIENT,
    level: tuple[float, float] = LEVEL_RANGE,
) -> Image.Image:
    """One defect-free canvas: dark level, slight tint, mild gradient, pixel noise.

    Args:
        seed: Any integer; the same seed gives the same image.
        size: PIL (width, height).
        noise: Standard deviation of the per-pixel, per-channel noise, in grey levels.
        gradient: Largest illumination swing (levels, centre to corner); the actual swing and its
            direction are drawn per image.
        level: Range of the per-image background level.

    Returns:
        An RGB image of ``size``.
    """
    width, height = size
    rng = np.random.default_rng([_CANVAS, seed])
    base = rng.uniform(*level) + rng.uniform(-TINT, TINT, 3)  # (3,)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    swing = rng.uniform(0.0, gradient)
    per_pixel = swing / max(np.hypot(width / 2, height / 2), 1.0)
    ramp_x = (np.arange(width, dtype=np.float32) - width / 2) * (np.cos(angle) * per_pixel)
    ramp_y = (np.arange(height, dtype=np.float32) - height / 2) * (np.sin(angle) * per_pixel)
    pixels = rng.standard_normal((height, width, 3), dtype=np.float32)
    pixels *= noise
    pixels += base.astype(np.float32)
    pixels += ramp_x[None, :, None]
    pixels += ramp_y[:, None, None]
    np.rint(pixels, out=pixels)
    np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def normal_canvases(
    count: int, seed: int = 0, size: tuple[int, int] = CANVAS_SIZE
) -> list[Image.Image]:
    """``count`` normal canvases with seeds ``seed, seed + 1, ...``."""
    return [normal_canvas(seed + i, size) for i in range(count)]


def blob_offsets(rng: np.random.Generator, pixels: int) -> np.ndarray:
    """A random 4-connected shape of exactly ``pixels`` pixels, as (row, col) offsets (pixels, 2).

    Grown one pixel at a time from (0, 0), so 3 pixels make an L or a 1x3 bar.
    """
    if pixels < 1:
        raise ValueError(f"a blob needs at least 1 pixel, got pixels={pixels}")
    shape = [(0, 0)]
    steps = ((0, 1), (1, 0), (0, -1), (-1, 0))
    while len(shape) < pixels:
        row, col = shape[rng.integers(len(shape))]
        d_row, d_col = steps[rng.integers(4)]
        candidate = (row + d_row, col + d_col)
        if candidate not in shape:
            shape.append(candidate)
    offsets = np.array(shape)
    return offsets - offsets.min(axis=0)


def paste_blob(
    image: Image.Image,
    offsets: np.ndarray,
    at: tuple[int, int],
    colour: Sequence[int],
) -> tuple[Image.Image, np.ndarray]:
    """Paints ``offsets`` (n, 2 as row, col) shifted to ``at`` = (x, y) in ``colour``.

    Returns:
        The new image and its mask (H, W), True on the painted pixels.
    """
    pixels = np.array(image.convert("RGB"))
    height, width = pixels.shape[:2]
    rows = offsets[:, 0] + at[1]
    cols = offsets[:, 1] + at[0]
    if rows.min() < 0 or cols.min() < 0 or rows.max() >= height or cols.max() >= width:
        raise ValueError(
            f"blob at (x, y)={at} spans rows {rows.min()}..{rows.max()} and columns "
            f"{cols.min()}..{cols.max()}, outside the {width}x{height} image; move it inside"
        )
    mask = np.zeros((height, width), dtype=bool)
    mask[rows, cols] = True
    pixels[mask] = np.asarray(colour, dtype=np.uint8)
    return Image.fromarray(pixels, "RGB"), mask


def random_position(
    rng: np.random.Generator, image_size: tuple[int, int], extent: tuple[int, int], margin: int = 2
) -> tuple[int, int]:
    """A top-left (x, y) such that an object of ``extent`` (width, height) fits inside."""
    width, height = image_size
    x = rng.integers(margin, max(width - extent[0] - margin, margin) + 1)
    y = rng.integers(margin, max(height - extent[1] - margin, margin) + 1)
    return int(x), int(y)


def with_dot(
    image: Image.Image,
    seed: int,
    pixels: int = 3,
    colour: Sequence[int] = (255, 255, 255),
    at: tuple[int, int] | None = None,
) -> tuple[Image.Image, np.ndarray]:
    """Pastes one tiny dot of ``pixels`` connected pixels (3 by default: an L or a 1x3 bar).

    Args:
        image: The canvas (not modified).
        seed: Chooses the shape and, unless ``at`` is given, the position.
        pixels: Number of pixels of the dot.
        colour: RGB colour of the dot.
        at: Top-left (x, y) of the dot's bounding box; random when None.

    Returns:
        The new image and the defect mask (H, W).
    """
    rng = np.random.default_rng([_DOT, seed])
    offsets = blob_offsets(rng, pixels)
    extent = (int(offsets[:, 1].max()) + 1, int(offsets[:, 0].max()) + 1)
    position = at if at is not None else random_position(rng, image.size, extent)
    return paste_blob(image, offsets, position, colour)


def with_line(
    image: Image.Image,
    seed: int,
    length: int = 48,
    thickness: int = 1,
    colour: Sequence[int] = (160, 160, 160),
) -> tuple[Image.Image, np.ndarray]:
    """Pastes a thin straight scratch of random orientation and position.

    Args:
        image: The canvas (not modified).
        seed: Chooses angle and position.
        length: Length of the segment in pixels.
        thickness: Width in pixels (1 = a one-pixel scratch).
        colour: RGB colour of the line.

    Returns:
        The new image and the defect mask (H, W).
    """
    rng = np.random.default_rng([_LINE, seed])
    angle = rng.uniform(0.0, np.pi)
    d_x, d_y = length * np.cos(angle), length * np.sin(angle)
    extent = (int(abs(d_x)) + thickness + 1, int(abs(d_y)) + thickness + 1)
    x0, y0 = random_position(rng, image.size, extent, margin=thickness + 1)
    # Start from the corner of the bounding box the direction implies.
    start = (x0 + (abs(d_x) if d_x < 0 else 0.0), y0)
    end = (start[0] + d_x, start[1] + d_y)
    stroke = Image.new("L", image.size, 0)
    ImageDraw.Draw(stroke).line([start, end], fill=255, width=thickness)
    mask = np.asarray(stroke) > 0
    pixels = np.array(image.convert("RGB"))
    pixels[mask] = np.asarray(colour, dtype=np.uint8)
    return Image.fromarray(pixels, "RGB"), mask


def saturated_colour(hue: float) -> tuple[int, int, int]:
    """The fully saturated, full-value RGB colour of ``hue`` in [0, 1)."""
    red, green, blue = colorsys.hsv_to_rgb(hue % 1.0, 1.0, 1.0)
    return round(255 * red), round(255 * green), round(255 * blue)


def with_coloured_dots(
    image: Image.Image,
    seed: int,
    count: int = 4,
    pixels: int = 4,
    colours: Sequence[Sequence[int]] | None = None,
) -> tuple[Image.Image, np.ndarray]:
    """Pastes ``count`` small dots of saturated hues; the first is pure blue (0, 0, 255).

    Pure blue is the hard case: its ITU-R BT.601 luma is 0.114 * 255 = 29, the same as a dark
    background, so a detector that only sees standard greyscale cannot find it.

    Args:
        image: The canvas (not modified).
        seed: Chooses hues, shapes and positions.
        count: Number of dots.
        pixels: Pixels per dot.
        colours: Explicit RGB colours (one per dot) instead of blue + random hues.

    Returns:
        The new image and the union of the dot masks (H, W).
    """
    rng = np.random.default_rng([_COLOURED, seed])
    if colours is None:
        colours = [BLUE] + [saturated_colour(rng.uniform()) for _ in range(count - 1)]
    if len(colours) != count:
        raise ValueError(f"got {len(colours)} colours for count={count}; give one per dot")
    mask = np.zeros((image.size[1], image.size[0]), dtype=bool)
    for colour in colours:
        offsets = blob_offsets(rng, pixels)
        extent = (int(offsets[:, 1].max()) + 1, int(offsets[:, 0].max()) + 1)
        image, dot = paste_blob(image, offsets, random_position(rng, image.size, extent), colour)
        mask |= dot
    return image, mask


class Defective(NamedTuple):
    """Images with a pasted defect and their masks (H, W)."""

    images: list[Image.Image]
    masks: list[np.ndarray]


class Scenario(NamedTuple):
    """The issue's experiment: normal images to fit and calibrate on, fresh normals, defects."""

    fit: list[Image.Image]
    calibrate: list[Image.Image]
    normal: list[Image.Image]
    dots: Defective
    lines: Defective
    coloured: Defective


def scenario(
    seed: int = 0,
    size: tuple[int, int] = CANVAS_SIZE,
    n_fit: int = 40,
    n_calibrate: int = 40,
    n_normal: int = 40,
    n_defective: int = 10,
) -> Scenario:
    """Disjoint seeded sets: fit normals, calibration normals, fresh normals and three kinds of
    defective canvases (3-pixel white dot, 1-pixel scratch, 4 coloured dots), each drawn on its
    own fresh canvas. Each set has its own block of seeds, so changing one count (say
    ``n_calibrate``) leaves the images of the other sets unchanged."""
    if max(n_fit, n_calibrate, n_normal, 2 * n_defective) > _BLOCK:
        raise ValueError(f"a scenario draws at most {_BLOCK} images per set")
    blocks = iter(range(seed * 6 * _BLOCK, (seed + 1) * 6 * _BLOCK, _BLOCK))

    def canvases(count: int) -> list[Image.Image]:
        start = next(blocks)
        return [normal_canvas(start + i, size) for i in range(count)]

    def defective(paste: Paste) -> Defective:
        start = next(blocks)
        pairs = [
            paste(normal_canvas(start + 2 * i, size), start + 2 * i + 1) for i in range(n_defective)
        ]
        return Defective([image for image, _ in pairs], [mask for _, mask in pairs])

    return Scenario(
        fit=canvases(n_fit),
        calibrate=canvases(n_calibrate),
        normal=canvases(n_normal),
        dots=defective(with_dot),
        lines=defective(with_line),
        coloured=defective(with_coloured_dots),
    )
