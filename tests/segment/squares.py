"""Tiny generated segmentation data: a bright square (class 1) on a dark noisy background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def square_pair(index: int, size: int = 64, seed: int = 0) -> tuple[Image.Image, Image.Image]:
    """One RGB image with a bright square of seeded place and side, and its 0/255 mask."""
    rng = np.random.default_rng([seed, index])
    side = int(rng.integers(size // 4, size // 2))
    top, left = (int(v) for v in rng.integers(0, size - side, 2))
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top:top + side, left:left + side] = 255
    pixels = rng.normal(60.0, 20.0, (size, size, 3))
    pixels[mask > 0] = rng.normal(210.0, 20.0, (int((mask > 0).sum()), 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image, Image.fromarray(mask)


def make_squares(root: Path, n: int = 12, size: int = 64, seed: int = 0) -> Path:
    """Writes ``root/images/sq_<i>.png`` and ``root/masks/sq_<i>.png``; returns ``root``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, mask = square_pair(i, size, seed)
        image.save(root / "images" / f"sq_{i:02d}.png")
        mask.save(root / "masks" / f"sq_{i:02d}.png")
    return root
