"""A segmentation bundle measured on image/mask pairs: the ``vitkit segment eval`` record.

Each image is predicted as :class:`~vitkit.segment.predict.SegmentPredictor` predicts it for a
user (resized whole to the training size, the mask brought back to the image's size with
nearest-neighbour sampling) and compared with its mask at full resolution, so the figures are
those of the masks a user gets, not of the model's smaller working size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from vitkit.bundle import BundleSource
from vitkit.console import make_progress, stderr_console
from vitkit.data.images import ImageProblem, load_rgb
from vitkit.data.masks import (
    BINARY_CLASSES,
    MaskPair,
    assign_pair_splits,
    read_mask,
    scan_segmentation,
    validate_pairs,
)
from vitkit.errors import DataError
from vitkit.segment.metrics import SegmentationMeter, SegmentationScores, image_scores
from vitkit.segment.predict import SegmentPredictor, resize_mask


def evaluate_pairs(predictor: SegmentPredictor, pairs: Sequence[MaskPair], batch_size: int = 8,
                   progress: bool = True, description: str = "evaluating",
                   per_image: list[dict[str, Any]] | None = None) -> SegmentationScores:
    """Dice and IoU of the predictor's masks against the pairs' masks, at full resolution.

    With ``per_image``, one ``{"path", "dice", "iou", "classes"}`` per pair is appended to it
    (the image's own mean foreground Dice and IoU, None when neither mask holds foreground;
    ``classes``: the class indices its mask holds), for the report's gallery.

    Raises:
        DataError: A pair that validated became unreadable during the run.
    """
    meter = SegmentationMeter(predictor.labels, predictor.record.ignore_index)
    n_classes = len(predictor.labels)
    with make_progress(progress) as bar:
        task = bar.add_task(description, total=len(pairs), stats="") if bar else None
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            images, targets = [], []
            for pair in chunk:
                try:
                    image, _ = load_rgb(pair.image)
                    targets.append(read_mask(pair, n_classes, image.size))
                except ImageProblem as problem:
                    raise DataError(f"{pair.image} or its mask became unusable during the run "
                                    f"({problem.reason}). Restore or remove the pair and run "
                                    "again.") from problem
                images.append(image)
            small = predictor.masks(torch.stack([predictor.transform(i) for i in images]))
            for mask, image, target, pair in zip(small, images, targets, chunk, strict=True):
                full = resize_mask(mask.numpy(), image.size)
                meter.update(torch.from_numpy(full)[None], torch.from_numpy(target)[None])
                if per_image is not None:
                    dice, iou, present = image_scores(full, target, n_classes,
                                                      predictor.record.ignore_index)
                    per_image.append({"path": str(pair.image), "dice": dice, "iou": iou,
                                      "classes": present})
            if bar is not None and task is not None:
                bar.update(task, advance=len(chunk))
    return meter.compute()


def training_splits(pairs: Sequence[MaskPair], val_fraction: float, seed: int
                    ) -> tuple[list[MaskPair], bool]:
    """The splits `vitkit segment train` gives the pairs: those without one are shared out
    (seeded, per MVTec defect type); when that leaves no val pair (data with a train/ folder
    only), val is carved out of train. Returns the pairs and whether val was carved."""
    split = assign_pair_splits(pairs, val_fraction, seed)
    if any(p.split == "val" for p in split):
        return split, False
    unsplit = [replace(p, split=None) if p.split == "train" else p for p in split]
    return assign_pair_splits(unsplit, val_fraction, seed), True


def select_split(pairs: Sequence[MaskPair]) -> tuple[str, list[MaskPair]]:
    """The test pairs if there are any, else val, else every pair (data without splits)."""
    for split in ("test", "val"):
        chosen = [p for p in pairs if p.split == split]
        if chosen:
            return split, chosen
    return "all", list(pairs)


@dataclass
class SegmentEvaluation:
    """:func:`evaluate_bundle`'s record and what the HTML report also shows.

    Attributes:
        record: The ``--json`` record.
        predictor: The predictor that was measured.
        pairs: The pairs measured, in order.
        per_image: One ``{"path", "dice", "iou", "classes"}`` per pair (see
            :func:`evaluate_pairs`).
    """

    record: dict[str, Any]
    predictor: SegmentPredictor
    pairs: list[MaskPair] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)


def evaluate_bundle(bundle: BundleSource, data: str, split: str | None = None,
                    batch_size: int = 8, variant: str | None = None, device: str = "cpu",
                    progress: bool = True) -> dict[str, Any]:
    """The ``vitkit segment eval --json`` record of ``bundle`` on the pairs in ``data``.

    Args:
        bundle: A segmentation bundle.
        data: A segmentation data folder (``images/`` + ``masks/``, optionally per split, or
            MVTec).
        split: ``train``, ``val``, ``test`` or ``all``; default: test if the data has it,
            else val, else all. On the data the bundle was trained on, the pairs get the
            splits training gave them (seeded), so val is the held-out part.
        batch_size: Images per batch.
        variant: The variant to run (default: the bundle's).
        device: ``cpu``, ``cuda`` or ``auto`` (torch variants).
        progress: Progress bars on stderr.

    Returns:
        ``{"dice", "iou", "pixel_accuracy", "per_class": {name: {"dice", "iou", "pixels"}},
        "pixels", "n_images", "split", "variant", "n_skipped", "skipped": [{"path",
        "reason"}]}``.

    Raises:
        DataError: The data's classes do not fit the bundle, or no pair is usable.
    """
    return evaluate_in_detail(bundle, data, split, batch_size, variant, device,
                              progress).record


def evaluate_in_detail(bundle: BundleSource, data: str, split: str | None = None,
                       batch_size: int = 8, variant: str | None = None, device: str = "cpu",
                       progress: bool = True) -> SegmentEvaluation:
    """:func:`evaluate_bundle`, with each image's own Dice beside the record."""
    predictor = SegmentPredictor.load(bundle, variant=variant, device=device)
    labels = predictor.labels
    scanned = scan_segmentation(
        data, mvtec_classes="single" if labels == list(BINARY_CLASSES) else "per_defect")
    if len(scanned.classes) != len(labels):
        raise DataError(f"{data} has {len(scanned.classes)} classes ({', '.join(scanned.classes)})"
                        f" but the model has {len(labels)} ({', '.join(labels)}). Evaluate on "
                        "data with the same classes (DATA/data.yaml or classes.txt names them).")
    if scanned.classes != labels and scanned.layout == "masks":
        stderr_console.print(f"[yellow]note[/]: {data} names its classes "
                             f"{', '.join(scanned.classes)}; the model's are {', '.join(labels)}. "
                             "Class indices are compared, under the model's names.")
    trained = predictor.bundle.meta.train.get("config") or {}
    if _same_folder(trained.get("data"), data):
        # The data it was trained on: the same held-out pairs as training chose.
        scanned.pairs, _ = training_splits(scanned.pairs, float(trained.get("val_fraction", 0.2)),
                                           int(trained.get("seed", 0)))
    if split is None:
        split, chosen = select_split(scanned.pairs)
    elif split == "all":
        chosen = list(scanned.pairs)
    else:
        chosen = [p for p in scanned.pairs if p.split == split]
        if not chosen:
            found = sorted({p.split or "none" for p in scanned.pairs})
            raise DataError(f"{data} has no {split!r} pairs (splits there: {', '.join(found)}). "
                            "Choose one of those with --split, or --split all.")
    scanned.pairs = chosen
    report = validate_pairs(scanned, progress=progress)
    if report.skipped:
        stderr_console.print(f"[yellow]{report.summary()}[/]")
    if not report.usable:
        raise DataError(f"no usable image/mask pairs to evaluate in {data} "
                        f"({report.summary()}).")
    per_image: list[dict[str, Any]] = []
    result = evaluate_pairs(predictor, report.usable, batch_size, progress, per_image=per_image)
    record = {
        **result.to_dict(),
        "n_images": len(report.usable),
        "split": split,
        "variant": predictor.variant.name,
        "n_skipped": len(report.skipped),
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in report.skipped],
    }
    return SegmentEvaluation(record, predictor, list(report.usable), per_image)


def _same_folder(recorded: object, data: str) -> bool:
    if not isinstance(recorded, str) or not recorded:
        return False
    try:
        return Path(recorded).resolve() == Path(data).resolve()
    except OSError:
        return False
