"""Detection data: boxes checked against their images, reported, loaded and transformed.

:mod:`vitkit.data.box_layouts` reads the annotations (COCO ``.json``, YOLO folders, MVTec
masks); its scanning names are re-exported here, so one import serves a detection task.

Boxes are XYXY in pixels of the image as :func:`~vitkit.data.images.load_rgb` gives it (after
EXIF orientation), ``x2``/``y2`` being the right/bottom edges (a 1-pixel box at (5, 5) is
5, 5, 6, 6). Validation (:func:`validate_detection`) keeps a box that reaches past the image by
at most :data:`CLIP_TOLERANCE` px, clipped, and drops (and reports, per file) one that reaches
further, has no area, or names an unknown class; an image whose file cannot be used is skipped
as in classification (:class:`~vitkit.data.validate.SkippedImage`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from vitkit.atomic import write_csv_atomic
from vitkit.data.annotated import check_all, group_splits, plural, reason_counts
from vitkit.data.box_layouts import (
    BAD_ANNOTATION,
    UNKNOWN_CLASS,
    Box,
    BoxRecord,
    DetectionData,
    DetectionItem,
    DetectionLayout,
    DroppedBox,
    MvtecClasses,
    boxes_from_mask,
    find_detection_layout,
    parse_yolo_line,
    scan_detection,
)
from vitkit.data.images import DEFAULT_MAX_PIXELS, ImageProblem, load_rgb
from vitkit.data.joint import JointAugmentation, joint_transform
from vitkit.data.masks import MaskPair, read_mask
from vitkit.data.validate import SkippedImage
from vitkit.errors import DataError

__all__ = [
    "CLIP_TOLERANCE",
    "DETECTION_AUGMENTATION",
    "Box",
    "BoxRecord",
    "DetectionData",
    "DetectionDataset",
    "DetectionItem",
    "DetectionLayout",
    "DetectionReport",
    "DetectionSample",
    "DroppedBox",
    "MvtecClasses",
    "Target",
    "assign_sample_splits",
    "boxes_from_mask",
    "check_box",
    "check_detection_usable",
    "collate_detection",
    "detection_transform",
    "find_detection_layout",
    "parse_yolo_line",
    "scan_detection",
    "validate_detection",
    "write_dropped_csv",
]

CLIP_TOLERANCE = 1.0
"""A box may reach this many pixels past the image (rounding in annotation tools) and is
clipped; one reaching further is dropped as a wrong annotation."""

# Reason kinds (the text before any " (detail)").
OUTSIDE = "outside the image"
NO_AREA = "no area"
SIZE_DIFFERS = "size differs from the annotation"

# Detection boxes rotate into their enclosing box, which grows with every degree: no rotation
# by default (Ultralytics' default too); flips, shifts, zoom and colour only.
DETECTION_AUGMENTATION = JointAugmentation(degrees=0.0, translate=0.05, scale=(0.9, 1.1))


@dataclass(frozen=True)
class DetectionSample:
    """A checked image and its boxes, ready for :class:`DetectionDataset`.

    Attributes:
        image: The image file.
        boxes: XYXY in pixels, inside the image, each with positive area.
        labels: Class index of each box.
        size: The image's (width, height).
        split: Its split, or ``None``.
        defect: The MVTec folder, else ``None``.
    """

    image: Path
    boxes: tuple[Box, ...]
    labels: tuple[int, ...]
    size: tuple[int, int]
    split: str | None = None
    defect: str | None = None


@dataclass
class DetectionReport:
    """The outcome of :func:`validate_detection`.

    Attributes:
        usable: The images that decoded, with their good boxes, in input order.
        skipped: Images left out (the scan's, then those whose file or mask failed).
        dropped: Boxes left out of usable images, in input order.
        classes: The class names.
        clipped: Boxes kept after clipping at most :data:`CLIP_TOLERANCE` px.
    """

    usable: list[DetectionSample]
    skipped: list[SkippedImage]
    dropped: list[DroppedBox]
    classes: list[str]
    clipped: int = 0

    @property
    def box_count(self) -> int:
        return sum(len(s.boxes) for s in self.usable)

    def summary(self) -> str:
        """One line, e.g. ``"38 usable images with 95 boxes (12 without any), 1 skipped (1 not
        an image); 3 boxes dropped in 2 files (2 outside the image, 1 unknown class)"``."""
        empty = sum(1 for s in self.usable if not s.boxes)
        line = (f"{plural(len(self.usable), 'usable image')} with "
                f"{_boxes(self.box_count)} ({empty} without any), "
                f"{len(self.skipped)} skipped")
        if self.skipped:
            line += f" ({reason_counts(s.reason for s in self.skipped)})"
        if self.dropped:
            files = len({d.path for d in self.dropped})
            line += (f"; {_boxes(len(self.dropped))} dropped in {plural(files, 'file')} "
                     f"({reason_counts(d.reason for d in self.dropped)})")
        if self.clipped:
            line += f"; {_boxes(self.clipped)} clipped by at most {CLIP_TOLERANCE:g} px"
        return line

    def dropped_per_file(self) -> list[str]:
        """One line per file, e.g. ``"labels/a.txt: 2 boxes dropped (line 3: outside the image
        (by 6.0 px …); line 5: unknown class (7 …))"``."""
        by_file: dict[Path, list[DroppedBox]] = defaultdict(list)
        for box in self.dropped:
            by_file[box.path].append(box)
        return [f"{path}: {_boxes(len(boxes))} dropped ("
                + "; ".join(f"{b.where}: {b.reason}" for b in boxes) + ")"
                for path, boxes in by_file.items()]


def _boxes(n: int) -> str:
    return f"{n} box{'' if n == 1 else 'es'}"


# --- validation -----------------------------------------------------------------------------

def check_box(box: Box, label: int, classes: Sequence[str], width: int, height: int,
              tolerance: float = CLIP_TOLERANCE) -> tuple[Box, bool] | str:
    """A pixel XYXY box checked against its image: the box (clipped to the image when it
    reached past by at most ``tolerance`` px) and whether it was clipped, or why it is dropped.
    """
    if not 0 <= label < len(classes):
        return (f"{UNKNOWN_CLASS} ({label}; the {len(classes)} classes are 0..{len(classes) - 1}: "
                f"{', '.join(classes[:6])}{' …' if len(classes) > 6 else ''})")
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        return f"{BAD_ANNOTATION} (not a finite number: {box})"
    if x2 <= x1 or y2 <= y1:
        return f"{NO_AREA} ({x2 - x1:g} x {y2 - y1:g} px)"
    over = max(-x1, -y1, x2 - width, y2 - height)
    if over > tolerance:
        return (f"{OUTSIDE} (by {over:.1f} px; box {x1:g},{y1:g},{x2:g},{y2:g} in a "
                f"{width}x{height} px image)")
    if over <= 0:
        return box, False
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return f"{NO_AREA} (nothing left inside the {width}x{height} px image)"
    return clipped, True


_Checked = tuple[DetectionSample, list[DroppedBox], int]


def validate_detection(data: DetectionData, max_pixels: int = DEFAULT_MAX_PIXELS,
                       progress: bool = True, workers: int = 2) -> DetectionReport:
    """Decodes every image (and MVTec mask) once and checks every box against its image.

    Args:
        data: What :func:`scan_detection` returned.
        max_pixels: Largest accepted width * height.
        progress: Show a progress bar on stderr.
        workers: Number of threads decoding.
    """

    def check(item: DetectionItem) -> SkippedImage | _Checked:
        try:
            image, _ = load_rgb(item.image, max_pixels)
        except ImageProblem as problem:
            return SkippedImage(item.image, problem.reason, item.defect, item.split)
        width, height = image.size
        if item.size is not None and item.size != image.size:
            return SkippedImage(item.image, f"{SIZE_DIFFERS} (file {width}x{height} px, "
                                            f"annotation {item.size[0]}x{item.size[1]} px)",
                                item.defect, item.split)
        records = item.boxes
        if item.mask_class is not None and item.source is not None:
            try:
                mask = read_mask(MaskPair(item.image, item.source, foreground=1), 2, image.size,
                                 max_pixels)
            except ImageProblem as problem:
                return SkippedImage(item.source, problem.reason, item.defect, item.split)
            records = tuple(BoxRecord(item.mask_class, box, f"region {k}")
                            for k, box in enumerate(boxes_from_mask(mask), start=1))
        scale = (width, height, width, height) if item.normalized else (1, 1, 1, 1)
        kept: list[Box] = []
        labels: list[int] = []
        dropped = list(item.dropped)
        clipped = 0
        for record in records:
            box = (record.box[0] * scale[0], record.box[1] * scale[1],
                   record.box[2] * scale[2], record.box[3] * scale[3])
            outcome = check_box(box, record.label, data.classes, width, height)
            if isinstance(outcome, str):
                dropped.append(DroppedBox(item.source or item.image, record.where, outcome,
                                          item.image))
                continue
            kept.append(outcome[0])
            labels.append(record.label)
            clipped += outcome[1]
        sample = DetectionSample(item.image, tuple(kept), tuple(labels), (width, height),
                                 item.split, item.defect)
        return sample, dropped, clipped

    outcomes = check_all(data.items, check, workers, progress, "Checking images and boxes")
    report = DetectionReport([], list(data.skipped), list(data.dropped), list(data.classes))
    for outcome in outcomes:
        if isinstance(outcome, SkippedImage):
            report.skipped.append(outcome)
            continue
        sample, dropped, clipped = outcome
        report.usable.append(sample)
        report.dropped += dropped
        report.clipped += clipped
    return report


def check_detection_usable(report: DetectionReport) -> None:
    """Raises unless the usable images can train a detector: some images and some boxes.

    Raises:
        DataError: No usable image (with the first reasons), or not a single usable box.
    """
    if not report.usable:
        examples = "; ".join(f"{s.path}: {s.reason}" for s in report.skipped[:3])
        raise DataError(f"no usable images: all {len(report.skipped)} were skipped "
                        f"({reason_counts(s.reason for s in report.skipped)}), e.g. {examples}. "
                        "Fix or replace those files.")
    if not report.box_count:
        lines = report.dropped_per_file()[:3]
        detail = (f"; {len(report.dropped)} were dropped: {'; '.join(lines)}"
                  if report.dropped else "")
        raise DataError(f"none of the {len(report.usable)} usable images has a usable box"
                        f"{detail}. Check that the annotations belong to these images.")


def write_dropped_csv(dropped: Sequence[DroppedBox], path: Path) -> None:
    """Writes ``path,where,reason,image`` rows, atomically (as ``skipped.csv`` is written)."""
    write_csv_atomic(path, ["path", "where", "reason", "image"],
                     ([str(d.path), d.where, d.reason, str(d.image or "")] for d in dropped))


def assign_sample_splits(samples: Sequence[DetectionSample], val_fraction: float = 0.2,
                         seed: int = 0, test_fraction: float = 0.0) -> list[DetectionSample]:
    """Gives a split to every sample without one: seeded, stratified per MVTec defect type
    (all together otherwise); samples with a split keep it.

    Raises:
        ConfigError: The fractions are negative or add up to 1 or more.
    """
    keys = [(s.image, s.defect or "all", s.split) for s in samples]
    splits = group_splits(keys, val_fraction, test_fraction, seed)
    return [s if s.split == split else replace(s, split=split)
            for s, split in zip(samples, splits, strict=True)]


# --- torch ----------------------------------------------------------------------------------

def detection_transform(size: int | tuple[int, int] | None, train: bool,
                        augment: JointAugmentation | None = None,
                        mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None) -> v2.Compose:
    """The joint image+boxes transform: for training :data:`DETECTION_AUGMENTATION` (flips,
    shift, zoom, colour; no rotation) unless ``augment`` is given; resize to ``size``; boxes
    clamped and those under 1 px dropped with their labels; float 0..1 (no normalisation by
    default: torchvision's detection models normalise inside)."""
    return joint_transform(size, train, augment or DETECTION_AUGMENTATION, mean, std, boxes=True)


Target = dict[str, torch.Tensor]


class DetectionDataset(Dataset[tuple[torch.Tensor, Target]]):
    """Images and their boxes: ``(image float (3, H, W), {"boxes": BoundingBoxes XYXY (N, 4)
    float32, "labels": int64 (N,)})``, the target torchvision's detection models take.

    Args:
        samples: The usable samples from :func:`validate_detection`.
        transform: A joint transform, e.g. :func:`detection_transform`; ``None`` only scales
            the image to 0..1.
        max_pixels: Largest accepted width * height.
        label_offset: Added to every label: 1 for models whose class 0 is the background
            (torchvision's Faster R-CNN), 0 for those without one.
    """

    def __init__(self, samples: Sequence[DetectionSample], transform: v2.Transform | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, label_offset: int = 0) -> None:
        self.samples = list(samples)
        self.transform = transform or joint_transform(None, False, mean=None, std=None,
                                                      boxes=True)
        self.max_pixels = max_pixels
        self.label_offset = label_offset

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        sample = self.samples[i]
        try:
            image, _ = load_rgb(sample.image, self.max_pixels)
        except ImageProblem as problem:
            raise DataError(f"{sample.image} became unusable during the run ({problem.reason}). "
                            "Restore or remove the file and run again.") from problem
        if image.size != sample.size:
            raise DataError(f"{sample.image} changed size during the run ({sample.size[0]}x"
                            f"{sample.size[1]} -> {image.width}x{image.height} px), so its boxes "
                            "no longer fit. Restore the file and run again.")
        boxes = tv_tensors.BoundingBoxes(
            torch.tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4),  # (N, 4)
            format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(image.height, image.width))
        labels = torch.tensor(sample.labels, dtype=torch.int64) + self.label_offset  # (N,)
        pixels = tv_tensors.Image(F.pil_to_tensor(image))  # (3, H, W) uint8
        out_image, target = self.transform(pixels, {"boxes": boxes, "labels": labels})
        return out_image.as_subclass(torch.Tensor), target


def collate_detection(batch: Sequence[tuple[torch.Tensor, Target]]
                      ) -> tuple[list[torch.Tensor], list[Target]]:
    """A batch as the two lists torchvision's detection models take (images may differ in
    size and boxes in number, so nothing is stacked)."""
    return [image for image, _ in batch], [target for _, target in batch]
