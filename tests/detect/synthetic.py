"""Tiny detection data a small detector learns in a few epochs: dark noisy images with one or
two bright squares, written as a YOLO folder (images/ + labels/ with train and val splits,
data.yaml naming the class) or as a COCO annotations file."""

from __future__ import annotations

import json
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


def make_squares_coco(root: Path, n_images: int = 22, size: int = 96, seed: int = 0,
                      category_id: int = 7) -> Path:
    """Writes ``root/images/sq_<i>.png`` and ``root/annotations.json`` (COCO boxes as x, y,
    width, height in pixels; one category, ``square``, with a non-zero id); returns the
    ``.json``. Two faults a real file has are added: an annotation outside its image and an
    image listed but not on disk."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    for index in range(n_images):
        image, boxes = square_image(index, size, seed)
        image.save(images_dir / f"sq_{index}.png")
        images.append({"id": 100 + index, "file_name": f"sq_{index}.png", "width": size,
                       "height": size})
        for x1, y1, x2, y2 in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + index,
                                "category_id": category_id, "iscrowd": 0,
                                "bbox": [x1, y1, x2 - x1, y2 - y1]})
    annotations.append({"id": len(annotations) + 1, "image_id": 100, "category_id": category_id,
                        "bbox": [size - 10, size - 10, 40, 40]})  # runs out of the image
    images.append({"id": 999, "file_name": "gone.png", "width": size, "height": size})
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": category_id, "name": "square"}]}))
    return path
