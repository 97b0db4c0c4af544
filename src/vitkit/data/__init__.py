"""Finding, checking and loading images: layouts, validation, transforms, datasets."""

from __future__ import annotations

from vitkit.data.dataset import ImageDataset, make_loader
from vitkit.data.images import DEFAULT_MAX_PIXELS, ImageProblem, load_rgb
from vitkit.data.intensity import IntensitySpec, load_image
from vitkit.data.layouts import (
    Sample,
    ScannedData,
    assign_splits,
    class_counts,
    ensure_validation_split,
    scan,
)
from vitkit.data.transforms import (
    Augmentation,
    Preprocessing,
    eval_transform,
    train_transform,
)
from vitkit.data.validate import (
    SkippedImage,
    ValidationReport,
    check_usable,
    validate_samples,
    write_skipped_csv,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Augmentation",
    "ImageDataset",
    "ImageProblem",
    "IntensitySpec",
    "Preprocessing",
    "Sample",
    "ScannedData",
    "SkippedImage",
    "ValidationReport",
    "assign_splits",
    "check_usable",
    "class_counts",
    "ensure_validation_split",
    "eval_transform",
    "load_image",
    "load_rgb",
    "make_loader",
    "scan",
    "train_transform",
    "validate_samples",
    "write_skipped_csv",
]
