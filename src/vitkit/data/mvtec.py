"""The MVTec AD folder layout: normal training images and labelled test images with masks.

``ROOT/train/good/*`` holds the normal images to learn from; ``ROOT/test/<type>/*`` the test
images, ``good`` for normal ones, with optional masks ``ROOT/ground_truth/<type>/<name>_mask.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vitkit.data.files import find_images
from vitkit.errors import DataError

GOOD = "good"
MASK_SUFFIX = "_mask"


def normal_images(data: str) -> Path:
    """The folder of normal images: ``DATA/train/good`` for an MVTec-style root, else DATA."""
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"{data} is not a folder. Give a folder of normal (good) images, or an "
                        "MVTec-style root with train/good/.")
    mvtec = root / "train" / GOOD
    return mvtec if mvtec.is_dir() else root


@dataclass
class TestImage:
    """One labelled test image of an MVTec-style folder."""

    path: Path
    defect: str  # "good" for normal images
    mask: Path | None


def mvtec_test_images(root: Path) -> list[TestImage]:
    """``ROOT/test/<type>/*`` (or ``ROOT/<type>/*``) with masks from ``ROOT/ground_truth``.

    Raises:
        DataError: No ``good`` folder or no defect folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give an MVTec-style root with test/good/ and "
                        "test/<defect>/ folders (optional ground_truth/<defect>/*_mask.png).")
    test = root / "test" if (root / "test").is_dir() else root
    types = sorted(p.name for p in test.iterdir() if p.is_dir() and not p.name.startswith("."))
    if GOOD not in types or len(types) < 2:
        raise DataError(
            f"{test} needs a '{GOOD}' folder and at least one defect folder (found: "
            f"{', '.join(types) or 'no folders'}). Layout: ROOT/test/good/*.png, "
            "ROOT/test/<defect>/*.png, optional ROOT/ground_truth/<defect>/<name>_mask.png."
        )
    images: list[TestImage] = []
    for defect in types:
        files, _ = find_images([str(test / defect)])
        for path in files:
            mask = root / "ground_truth" / defect / f"{path.stem}{MASK_SUFFIX}.png"
            images.append(TestImage(path, defect, mask if mask.is_file() else None))
    return images


def read_mask(test: TestImage, shape: tuple[int, ...]) -> np.ndarray:
    """The ground-truth mask at the map's (H, W); all-False for images without one."""
    height, width = shape
    if test.mask is None:
        return np.zeros((height, width), dtype=bool)
    with Image.open(test.mask) as mask:
        resized = mask.convert("L").resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(resized) > 127
