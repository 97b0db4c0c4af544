"""Dice and IoU per class and their means, from one confusion matrix over every pixel.

Pure math: tensors in, numbers out. :class:`SegmentationMeter` sums a pixel confusion matrix
(torchmetrics' ``MulticlassConfusionMatrix``, which drops ``ignore_index`` pixels) over the
batches it is given; :func:`scores` turns it into, per class ``c``::

    dice(c) = 2 TP / (2 TP + FP + FN)        iou(c) = TP / (TP + FP + FN)

counted over all pixels of all images together (a class's figure weighs each pixel the same,
not each image). A class neither in the masks nor in the predictions has no figure (None) and
no part in the means. ``dice`` and ``iou`` are the means over the *foreground* classes (every
class but the first, the background): a model that answers "background" everywhere scores 0,
however much background there is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from vitkit.data.masks import IGNORE_INDEX


@dataclass
class SegmentationScores:
    """Dice and IoU of a set of predicted masks.

    Attributes:
        dice: Mean Dice over the foreground classes that have one; None if none has.
        iou: Mean IoU over the same classes.
        per_class: Class name -> ``{"dice", "iou", "pixels"}`` (``pixels``: how many mask
            pixels are of that class).
        pixel_accuracy: Share of counted pixels whose class is right.
        pixels: Pixels counted (those marked ``ignore_index`` are not).
    """

    dice: float | None
    iou: float | None
    per_class: dict[str, dict[str, Any]]
    pixel_accuracy: float
    pixels: int

    def to_dict(self) -> dict[str, Any]:
        return {"dice": self.dice, "iou": self.iou, "pixel_accuracy": self.pixel_accuracy,
                "per_class": self.per_class, "pixels": self.pixels}


def scores(confusion: torch.Tensor, classes: Sequence[str]) -> SegmentationScores:
    """Dice and IoU from a confusion matrix ``(C, C)``: row = true class, column = predicted."""
    matrix = confusion.double()
    tp = matrix.diagonal()
    fp = matrix.sum(0) - tp  # predicted c, truly another class
    fn = matrix.sum(1) - tp  # truly c, predicted another class
    per_class: dict[str, dict[str, Any]] = {}
    dices: list[float] = []
    ious: list[float] = []
    for index, name in enumerate(classes):
        union = float(tp[index] + fp[index] + fn[index])
        dice = iou = None
        if union > 0:
            dice = round(float(2 * tp[index] / (2 * tp[index] + fp[index] + fn[index])), 6)
            iou = round(float(tp[index]) / union, 6)
            if index > 0:
                dices.append(dice)
                ious.append(iou)
        per_class[name] = {"dice": dice, "iou": iou, "pixels": int(matrix[index].sum())}
    total = float(matrix.sum())
    return SegmentationScores(
        dice=round(sum(dices) / len(dices), 6) if dices else None,
        iou=round(sum(ious) / len(ious), 6) if ious else None,
        per_class=per_class,
        pixel_accuracy=round(float(tp.sum()) / total, 6) if total else 0.0,
        pixels=int(total),
    )


class SegmentationMeter:
    """Sums the pixel confusion matrix of predicted against true masks, batch by batch."""

    def __init__(self, classes: Sequence[str], ignore_index: int = IGNORE_INDEX) -> None:
        self.classes = list(classes)
        self.confusion = MulticlassConfusionMatrix(len(self.classes), ignore_index=ignore_index,
                                                   validate_args=False)

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch: ``predicted`` class indices ``(B, H, W)`` or logits ``(B, C, H, W)``,
        ``target`` class indices ``(B, H, W)`` (``ignore_index`` pixels are not counted)."""
        if predicted.dim() == target.dim() + 1:
            predicted = predicted.argmax(1)
        self.confusion.update(predicted.detach().cpu().long(), target.detach().cpu().long())

    def compute(self) -> SegmentationScores:
        return scores(self.confusion.compute(), self.classes)


def image_scores(predicted: np.ndarray, target: np.ndarray, n_classes: int,
                 ignore_index: int = IGNORE_INDEX) -> tuple[float | None, float | None, list[int]]:
    """One image's mean foreground Dice and IoU (as :func:`scores` on that image alone) and
    the classes its target mask holds. ``(None, None, ...)`` when neither mask holds any
    foreground pixel (nothing to miss or invent)."""
    keep = target != ignore_index
    truth = target[keep].astype(np.int64).ravel()
    guess = predicted[keep].astype(np.int64).ravel()
    matrix = np.bincount(truth * n_classes + guess, minlength=n_classes * n_classes)
    matrix = matrix[:n_classes * n_classes].reshape(n_classes, n_classes)
    tp = np.diag(matrix).astype(np.float64)
    fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
    dices, ious = [], []
    for c in range(1, n_classes):
        union = tp[c] + fp[c] + fn[c]
        if union > 0:
            dices.append(2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]))
            ious.append(tp[c] / union)
    present = [c for c in range(n_classes) if matrix[c].sum() > 0]
    if not dices:
        return None, None, present
    return round(float(np.mean(dices)), 6), round(float(np.mean(ious)), 6), present
