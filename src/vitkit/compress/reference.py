"""Reference images for compression: the validation images a variant is measured on and the
training images a static quantizer is calibrated on, and the measurements themselves.

Without ``--data`` the bundle's own training data is used: the split is recomputed from the
recorded config (same data, seed and fractions give the same split) and checked against the
recorded data fingerprint, so a changed folder is noticed instead of silently measured.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.bundle import BundleMeta
from vitkit.data import (
    DEFAULT_MAX_PIXELS,
    Sample,
    eval_transform,
    load_image,
    scan,
    validate_samples,
)
from vitkit.data.intensity import bundle_intensity
from vitkit.data.layouts import data_fingerprint, ensure_validation_split
from vitkit.errors import DataError


@dataclass
class ReferenceImages:
    """Labelled images plus where they came from (for messages and the bundle record)."""

    samples: list[Sample]
    source: str


def reference_images(meta: BundleMeta, data: str | None = None, split: str = "val",
                     limit: int | None = None, seed: int = 0) -> ReferenceImages | None:
    """The ``split`` images of ``data`` (or of the bundle's training data), or None when there
    are none (a bundle trained elsewhere, data moved): callers then mark accuracy unknown.

    ``limit`` keeps a class-balanced, seeded subset (calibration rarely needs more than a few
    hundred images).

    Raises:
        DataError: ``data`` was given but has no usable images of that split, or the bundle's
            data changed since training.
    """
    config = dict(meta.train.get("config") or {})
    source = data or config.get("data")
    if not source or not Path(str(source)).exists():
        if data:
            raise DataError(f"{data} does not exist; give a folder of labelled images.")
        return None
    scanned = scan(str(source))
    samples = ensure_validation_split(scanned, float(config.get("val_fraction", 0.2)),
                                      int(config.get("seed", 0)),
                                      float(config.get("test_fraction", 0.0)))
    if data is None:
        samples = _as_trained(meta, samples, str(source))
    chosen = [s for s in samples if s.split == split] or (
        samples if data is not None and split == "val" else [])
    known = set(meta.labels)
    chosen = [s for s in chosen if s.label in known]
    if not chosen:
        if data is not None:
            raise DataError(f"{data} has no {split} images with the bundle's classes "
                            f"({', '.join(meta.labels)}).")
        return None
    if limit is not None and len(chosen) > limit:
        chosen = _balanced_subset(chosen, limit, seed)
    return ReferenceImages(chosen, f"{source} ({split}, {len(chosen)} images)")


def _as_trained(meta: BundleMeta, samples: list[Sample], source: str) -> list[Sample]:
    """The samples as training used them. Its fingerprint covers the usable images only, so
    when the folder holds files training skipped (a broken file, a DICOM without pixels),
    those are found by decoding once and dropped; any other difference is an error."""
    recorded = meta.train.get("data_fingerprint")
    if not recorded or recorded == data_fingerprint(samples):
        return samples
    max_pixels = (meta.train.get("config") or {}).get("max_pixels") or DEFAULT_MAX_PIXELS
    usable = validate_samples(samples, int(max_pixels), progress=False,
                              intensity=bundle_intensity(meta)).usable
    if recorded != data_fingerprint(usable):
        raise DataError(f"{source} changed since the bundle was trained (its fingerprint "
                        "differs), so its validation split is not the one the bundle was "
                        "measured on; pass --data with the validation images to use.")
    return usable


def _balanced_subset(samples: list[Sample], limit: int, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Sample]] = {}
    for sample in samples:
        by_label.setdefault(sample.label, []).append(sample)
    for group in by_label.values():
        rng.shuffle(group)  # type: ignore[arg-type]
    chosen: list[Sample] = []
    while len(chosen) < limit:
        for group in by_label.values():
            if group and len(chosen) < limit:
                chosen.append(group.pop())
    return chosen


def image_batches(samples: Sequence[Sample], meta: BundleMeta, batch_size: int = 32
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Preprocessed ``(images, label indices)`` batches; unreadable images are skipped."""
    from vitkit.data import ImageProblem, Preprocessing

    transform = eval_transform(Preprocessing.model_validate(meta.preprocessing))
    intensity = bundle_intensity(meta)  # the network's input is read as in training
    index = {label: i for i, label in enumerate(meta.labels)}
    images: list[torch.Tensor] = []
    labels: list[int] = []
    for sample in samples:
        try:
            image, _ = load_image(sample.path, intensity=intensity)
        except ImageProblem:
            continue
        images.append(transform(image))
        labels.append(index[sample.label])
        if len(images) == batch_size:
            yield torch.stack(images), torch.tensor(labels)
            images, labels = [], []
    if images:
        yield torch.stack(images), torch.tensor(labels)


@dataclass
class Comparison:
    """A variant's outputs against the fp32 torch model's on the same images."""

    n_images: int
    max_abs_diff: float
    top1_agreement: float
    accuracy: float | None  # of the variant, when labels are known
    reference_accuracy: float | None  # of the fp32 torch model

    def to_dict(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "max_abs_diff": self.max_abs_diff,
                "top1_agreement": self.top1_agreement, "accuracy": self.accuracy,
                "reference_accuracy": self.reference_accuracy}

    @property
    def accuracy_drop(self) -> float | None:
        """Points (percent) below the fp32 model; negative when the variant does better."""
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return round(100.0 * (self.reference_accuracy - self.accuracy), 3)


def compare(reference: Any, candidate: Any, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
            ) -> Comparison:
    """Runs both callables (``batch -> logits``) on the same batches and compares them."""
    n = agree = right_ref = right_cand = 0
    max_diff = 0.0
    for images, labels in batches:
        expected = reference(images).float()
        got = candidate(images).float()
        max_diff = max(max_diff, float((expected - got).abs().max()))
        expected_top1, got_top1 = expected.argmax(dim=1), got.argmax(dim=1)
        agree += int((expected_top1 == got_top1).sum())
        right_ref += int((expected_top1 == labels).sum())
        right_cand += int((got_top1 == labels).sum())
        n += len(labels)
    if n == 0:
        raise DataError("no readable reference images to compare on")
    return Comparison(n, round(max_diff, 6), agree / n, right_cand / n, right_ref / n)
