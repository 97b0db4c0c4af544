"""Generated woven textures (normal images) and stains (defects) for the anomaly tests, and the
``normal_dir`` fixture (see conftest.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image

SIZE = 192  # the generated textures; the deep methods squash them to their input size
N_NORMAL = 14


def woven_texture(seed: int, size: int = SIZE, contrast: float = 45.0) -> np.ndarray:
    """A regular weave with a random phase, per-image brightness and pixel noise: (H, W, 3)."""
    rng = np.random.default_rng([7, seed])
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 2)
    weave = np.sin(x * 2 * np.pi / 12 + phase[0]) * np.sin(y * 2 * np.pi / 12 + phase[1])
    grey = 120 + contrast * weave + rng.uniform(-8, 8) + rng.normal(0, 6, (size, size))
    rgb = np.stack([grey, grey * 0.9, grey * 0.75], axis=2)
    return np.clip(rgb, 0, 255)


def with_stain(pixels: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image:
    """Pastes a flat dark stain (the weave is gone) into ``box`` = (left, top, right, bottom)."""
    left, top, right, bottom = box
    stained = pixels.copy()
    stained[top:bottom, left:right] = (35.0, 30.0, 25.0)
    return Image.fromarray(stained.astype(np.uint8), "RGB")


def to_image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels.astype(np.uint8), "RGB")
