"""A detection bundle measured on annotated images: the ``vitkit detect eval`` record.

The images go through the data layer (:mod:`vitkit.data.boxes`: the same reading, checks and
resize as in training) and the bundle's :class:`~vitkit.detect.predict.Detector` (so an
exported variant is measured exactly as it runs). mAP is computed at the detector's input
size: IoU does not change when both boxes are scaled by the same factors per axis.

Which images (``split``): ``auto`` takes the data's ``test`` split when it has one; else, when
DATA is the folder the bundle was trained on, the validation images of that run (the same
seeded split, so training images never count); else every usable image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from vitkit.bundle import Bundle, BundleSource
from vitkit.console import make_progress
from vitkit.data.box_layouts import DroppedBox
from vitkit.data.boxes import (
    DetectionDataset,
    DetectionSample,
    assign_sample_splits,
    collate_detection,
    detection_transform,
    scan_detection,
    validate_detection,
)
from vitkit.data.images import DEFAULT_MAX_PIXELS
from vitkit.data.validate import SkippedImage
from vitkit.detect.graph import Detection
from vitkit.detect.metrics import DetectionMetric, DetectionScores, image_matches
from vitkit.detect.predict import Detector, load_detector
from vitkit.errors import DataError

Split = Literal["auto", "all", "train", "val", "test"]
SPLITS = ("auto", "all", "train", "val", "test")


def score_batches(predict: Callable[[list[torch.Tensor]], list[Detection]],
                  batches: Iterable[tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]],
                  classes: Sequence[str], label_offset: int = 0,
                  step: Callable[[], None] | None = None,
                  observe: Callable[[list[Detection], list[dict[str, torch.Tensor]]], None]
                  | None = None) -> DetectionScores:
    """mAP of ``predict`` (images -> detections with labels ``0..C-1``) over batches of
    ``(images, targets)`` whose labels carry ``label_offset`` (the dataset's); ``observe``
    sees each batch's predictions and targets (labels ``0..C-1``)."""
    metric = DetectionMetric(classes)
    for images, targets in batches:
        predictions = predict(images)
        truth = [{"boxes": t["boxes"], "labels": t["labels"] - label_offset} for t in targets]
        metric.update(predictions, truth)
        if observe is not None:
            observe(predictions, truth)
        if step is not None:
            step()
    return metric.compute()


def evaluate_detector(detector: Detector, samples: Sequence[DetectionSample],
                      batch_size: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS,
                      progress: bool = True, description: str = "evaluating",
                      per_image: list[dict[str, Any]] | None = None) -> DetectionScores:
    """COCO metrics of ``detector`` on checked samples; with ``per_image``, each sample's
    :func:`~vitkit.detect.metrics.image_matches` at the detector's score threshold (and its
    ``path``) is appended to it, in the samples' order."""
    dataset = DetectionDataset(samples, detection_transform(detector.size, train=False),
                               max_pixels)  # labels 0..C-1 (no offset)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_detection)
    with make_progress(progress) as bar:
        task = bar.add_task(description, total=len(loader), stats="") if bar else None
        step = (lambda: bar.advance(task)) if bar is not None and task is not None else None
        observe = None
        if per_image is not None:
            def observe(predictions: list[Detection],
                        targets: list[dict[str, torch.Tensor]]) -> None:
                for prediction, target in zip(predictions, targets, strict=True):
                    counts = image_matches(prediction, target, detector.record.score_threshold)
                    per_image.append({"path": str(samples[len(per_image)].image), **counts})
        return score_batches(lambda images: detector.raw(torch.stack(images)), loader,
                             detector.labels, 0, step, observe)


def choose_samples(samples: Sequence[DetectionSample], split: str, bundle: Bundle,
                   data: Path) -> tuple[list[DetectionSample], str]:
    """The samples to measure and the split they are (see the module docstring)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}.")
    if split == "all":
        return list(samples), "all"
    if split == "auto":
        if any(s.split == "test" for s in samples):
            split = "test"
        else:
            config = bundle.meta.train.get("config") or {}
            trained_on = config.get("data")
            if not trained_on or Path(str(trained_on)).resolve() != data.resolve():
                return list(samples), "all"
            samples = assign_sample_splits(samples, float(config.get("val_fraction", 0.2)),
                                           int(config.get("seed", 0)),
                                           float(config.get("test_fraction", 0.0)))
            split = "val"
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        found = sorted({s.split or "none" for s in samples})
        raise DataError(f"{data} has no {split} images (its splits: {', '.join(found)}). "
                        "Choose another --split, or 'all'.")
    return chosen, split


@dataclass
class DetectEvaluation:
    """:func:`evaluate_bundle`'s record and what the HTML report also shows.

    Attributes:
        record: The ``--json`` record.
        detector: The detector that was measured.
        samples: The images measured, in order.
        per_image: One ``{"path", "truth", "predicted", "matched", "missed", "false"}`` per
            sample (see :func:`evaluate_detector`).
        skipped: The images left out, and why.
        dropped: The boxes left out, and why.
    """

    record: dict[str, Any]
    detector: Detector
    samples: list[DetectionSample] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[SkippedImage] = field(default_factory=list)
    dropped: list[DroppedBox] = field(default_factory=list)


def evaluate_bundle(bundle: BundleSource, data: str | Path, split: str = "auto",
                    variant: str | None = None, batch_size: int = 8, device: str = "cpu",
                    progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
                    ) -> dict[str, Any]:
    """The ``vitkit detect eval --json`` record: ``map_50``, ``map_50_95``, ``per_class``
    (``{name: {ap_50, ap_50_95}}``), ``n_images``, ``skipped``, ``dropped_boxes``,
    ``split``, ``variant``, ``pr_curves`` (per class, IoU 0.5, for the report)."""
    return evaluate_in_detail(bundle, data, split, variant, batch_size, device, progress,
                              max_pixels).record


def evaluate_in_detail(bundle: BundleSource, data: str | Path, split: str = "auto",
                       variant: str | None = None, batch_size: int = 8, device: str = "cpu",
                       progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
                       ) -> DetectEvaluation:
    """:func:`evaluate_bundle`, with each image's matched, missed and false boxes beside the
    record, and the skipped images and dropped boxes themselves."""
    opened = Bundle.open(bundle)
    detector = load_detector(opened, variant, device)
    data_path = Path(data).expanduser()
    trained = opened.meta.train.get("config") or {}
    scanned = scan_detection(data_path, trained.get("mvtec_classes", "single"))
    if scanned.classes != detector.labels:
        raise DataError(f"{data} names the classes {scanned.classes}; the bundle detects "
                        f"{detector.labels}. Evaluate on data with the bundle's classes, in "
                        "the same order.")
    report = validate_detection(scanned, max_pixels, progress=progress)
    if not report.usable:
        raise DataError(f"no usable images in {data}: {report.summary()}.")
    samples, used = choose_samples(report.usable, split, opened, data_path)
    per_image: list[dict[str, Any]] = []
    scores = evaluate_detector(detector, samples, batch_size, max_pixels, progress,
                               f"evaluating {used}", per_image)
    record = {"bundle": str(opened), "data": str(data), "split": used,
            "variant": detector.variant, "map_50": scores.map_50,
            "map_50_95": scores.map_50_95, "per_class": scores.per_class,
            "n_images": scores.n_images, "skipped": len(report.skipped),
            "dropped_boxes": len(report.dropped), "pr_curves": scores.pr_curves}
    return DetectEvaluation(record, detector, list(samples), per_image, list(report.skipped),
                            list(report.dropped))
