"""Tiny detection data a small detector learns in a few epochs: dark noisy images with one or
two bright squares, written as a YOLO folder (images/ + labels/ with train and val splits,
data.yaml naming the class)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def square_image(index: int, size: int = 96, seed: int = 0
                 ) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """One image and its boxes (XYXY px): 1-2 bright squares of 20-34 px, apart."""
    rng = np.random.default_rng([seed, index])
    pixels = rng.normal(40.0, 12.0, (size, size, 3))
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(1 + index % 2):
        for _attempt in range(20):
            side = int(rng.integers(20, 35))
            x, y = (int(v) for v in rng.integers(2, size - side - 2, 2))
            box = (x, y, x + side, y + side)
            if all(box[2] + 4 <= b[0] or b[2] + 4 <= box[0] or box[3] + 4 <= b[1]
                   or b[3] + 4 <= box[1] for b in boxes):
                boxes.append(box)
                pixels[y:y + side, x:x + side] = rng.normal(220.0, 10.0, 3)
                break
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), boxes


def make_squares(root: Path, n_train: int = 16, n_val: int = 6, size: int = 96,
                 seed: int = 0) -> Path:
    """Writes ``root/images/{train,val}/sq_<i>.png``, ``root/labels/…/sq_<i>.txt`` and
    ``root/data.yaml`` (one class, ``square``); returns ``root``."""
    index = 0
    for split, count in (("train", n_train), ("val", n_val)):
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            image, boxes = square_image(index, size, seed)
            image.save(images / f"sq_{index}.png")
            lines = [f"0 {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} "
                     f"{(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}" for x1, y1, x2, y2 in boxes]
            (labels / f"sq_{index}.txt").write_text("\n".join(lines) + "\n")
            index += 1
    (root / "data.yaml").write_text("names: [square]\n")
    return root
