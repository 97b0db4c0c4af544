"""Anomaly-detection metrics: image-level AUROC/AP/F1 and the evaluation that gathers them
with the pixel metrics (pixel AUROC, AU-PRO: :mod:`vitkit.anomaly.pixel_metrics`).

An image or pixel counts as flagged iff ``score >= threshold`` (see
:mod:`vitkit.anomaly.threshold`). Metrics that need both classes (AUROC, AP) are ``None`` when
one class is missing, never a made-up number; undefined ratios at a threshold (precision with
nothing flagged, recall with no anomalies) are 0.0, like scikit-learn's ``zero_division=0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, roc_auc_score

from vitkit.anomaly.pixel_metrics import pixel_auroc, pro_score
from vitkit.anomaly.threshold import as_label_array, as_score_array, check_threshold


@dataclass
class ImageMetrics:
    """Image-level detection quality at one threshold.

    Attributes:
        auroc: Area under the ROC curve; ``None`` unless both classes are present.
        ap: Average precision (scikit-learn's step-wise definition); ``None`` likewise.
        f1: F1 of ``score >= threshold``.
        precision: Anomalies among flagged images (0.0 when nothing is flagged).
        recall: Flagged among anomalous images (0.0 when there are none).
        n_normal: Number of normal images.
        n_anomalous: Number of anomalous images.
    """

    auroc: float | None
    ap: float | None
    f1: float
    precision: float
    recall: float
    n_normal: int
    n_anomalous: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict with the same keys as the attributes."""
        return {
            "auroc": self.auroc,
            "ap": self.ap,
            "f1": self.f1,
            "precision": self.precision,
            "recall": self.recall,
            "n_normal": self.n_normal,
            "n_anomalous": self.n_anomalous,
        }


@dataclass
class AnomalyEvaluation:
    """Everything ``vitkit anomaly evaluate`` reports about a labelled test set.

    Attributes:
        image_auroc: Image-level AUROC (``None`` with a single class).
        image_ap: Image-level average precision (``None`` with a single class).
        f1: Image-level F1 at ``threshold``.
        threshold: The raw-score threshold the decisions used.
        n_normal: Normal test images.
        n_anomalous: Anomalous test images.
        per_defect: Defect type -> metrics of normal images vs images of that type.
        pixel_auroc: Pixel-level AUROC, ``None`` when no ground-truth masks were usable.
        pro: AU-PRO up to ``fpr_limit`` (normalised to [0, 1]), ``None`` likewise.
    """

    image_auroc: float | None
    image_ap: float | None
    f1: float
    threshold: float
    n_normal: int
    n_anomalous: int
    per_defect: dict[str, ImageMetrics] = field(default_factory=dict)
    pixel_auroc: float | None = None
    pro: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract; ``pixel_auroc`` and ``pro`` appear only when computed.

        ``per_defect[type]["n"]`` is the number of images of that defect type.
        """
        data: dict[str, Any] = {"image_auroc": self.image_auroc, "image_ap": self.image_ap,
                                "f1": self.f1}
        if self.pixel_auroc is not None:
            data["pixel_auroc"] = self.pixel_auroc
        if self.pro is not None:
            data["pro"] = self.pro
        data["per_defect"] = {
            name: {"image_auroc": m.auroc, "image_ap": m.ap, "f1": m.f1, "n": m.n_anomalous}
            for name, m in self.per_defect.items()
        }
        data.update(threshold=self.threshold, n_normal=self.n_normal,
                    n_anomalous=self.n_anomalous)
        return data


# ----------------------------------------------------------------------------- image level


def auroc_standard_error(auroc: float, n_negative: int, n_positive: int) -> float:
    """Hanley and McNeil's (1982) standard error of an AUROC from ``n_negative`` normal and
    ``n_positive`` anomalous scores.

    Raises:
        ValueError: If either count is below 1 or the AUROC is outside [0, 1].
    """
    if n_negative < 1 or n_positive < 1 or not 0.0 <= auroc <= 1.0:
        raise ValueError(f"need an AUROC in [0, 1] and at least one score of each kind, got "
                         f"{auroc}, {n_negative}, {n_positive}")
    q1 = auroc / (2.0 - auroc)
    q2 = 2.0 * auroc**2 / (1.0 + auroc)
    variance = (auroc * (1.0 - auroc) + (n_positive - 1) * (q1 - auroc**2)
                + (n_negative - 1) * (q2 - auroc**2)) / (n_negative * n_positive)
    return math.sqrt(max(variance, 0.0))


def image_metrics(scores: ArrayLike, labels: ArrayLike, threshold: float) -> ImageMetrics:
    """AUROC, AP and F1/precision/recall at ``threshold`` for image scores.

    Args:
        scores: ``(N,)`` raw scores, higher = more anomalous.
        labels: ``(N,)`` bools or 0/1, ``True``/1 = anomaly.
        threshold: Raw-score threshold; ``score >= threshold`` is flagged.

    Returns:
        The metrics; ``auroc``/``ap`` are ``None`` if only one class is present.

    Raises:
        ValueError: If the inputs are empty, non-finite, or their shapes disagree.
    """
    s = as_score_array(scores)
    y = as_label_array(labels, s.size)
    t = check_threshold(threshold)
    flagged = s >= t
    tp = int(np.sum(flagged & y))
    fp = int(np.sum(flagged & ~y))
    fn = int(np.sum(~flagged & y))
    n_anomalous = int(y.sum())
    both = 0 < n_anomalous < y.size
    return ImageMetrics(
        auroc=float(roc_auc_score(y, s)) if both else None,
        ap=float(average_precision_score(y, s)) if both else None,
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        n_normal=int(y.size - n_anomalous),
        n_anomalous=n_anomalous,
    )


def per_defect_metrics(scores: ArrayLike, defect_types: Sequence[str], threshold: float,
                       normal_type: str = "good") -> dict[str, ImageMetrics]:
    """Metrics of the normal images against each defect type on its own.

    Args:
        scores: ``(N,)`` raw scores.
        defect_types: ``N`` type names; ``normal_type`` marks normal images.
        threshold: Raw-score threshold.
        normal_type: The name of the normal type.

    Returns:
        Defect type (sorted by name) -> metrics on the normal images plus that type's images.

    Raises:
        ValueError: If the lengths disagree or the scores are invalid.
    """
    s = as_score_array(scores)
    types = _check_types(defect_types, s.size)
    is_normal = types == normal_type
    result: dict[str, ImageMetrics] = {}
    for name in sorted(set(types[~is_normal].tolist())):
        keep = is_normal | (types == name)
        result[name] = image_metrics(s[keep], types[keep] == name, threshold)
    return result


def evaluate_anomaly(scores: ArrayLike, defect_types: Sequence[str], threshold: float,
                     maps: Sequence[np.ndarray] | None = None,
                     masks: Sequence[np.ndarray | None] | None = None,
                     normal_type: str = "good") -> AnomalyEvaluation:
    """Image metrics, per-defect metrics and, when masks exist, pixel AUROC and AU-PRO.

    Pixel metrics use the normal images (all-false masks) and the anomalous images that have
    a mask; they are computed only if at least one anomalous image has one.

    Args:
        scores: ``(N,)`` raw image scores.
        defect_types: ``N`` type names; ``normal_type`` marks normal images.
        threshold: Raw-score threshold.
        maps: ``N`` full-size anomaly maps ``(H_i, W_i)``, required when ``masks`` is given.
        masks: ``N`` ground-truth masks ``(H_i, W_i)`` (bool; ``True`` = defect), ``None``
            for images without a mask file. A normal image's mask must be empty or ``None``.
        normal_type: The name of the normal type.

    Returns:
        The evaluation.

    Raises:
        ValueError: If lengths or shapes disagree, ``masks`` comes without ``maps``, or a
            normal image has defect pixels in its mask.
    """
    s = as_score_array(scores)
    types = _check_types(defect_types, s.size)
    labels = types != normal_type
    overall = image_metrics(s, labels, threshold)
    evaluation = AnomalyEvaluation(
        image_auroc=overall.auroc,
        image_ap=overall.ap,
        f1=overall.f1,
        threshold=check_threshold(threshold),
        n_normal=overall.n_normal,
        n_anomalous=overall.n_anomalous,
        per_defect=per_defect_metrics(s, types.tolist(), threshold, normal_type),
    )
    if masks is None:
        return evaluation
    if maps is None:
        raise ValueError("masks were given without maps: pass the anomaly maps (upsampled "
                         "to each image's size) to compute pixel metrics")
    if len(maps) != s.size or len(masks) != s.size:
        raise ValueError(f"need one map and one mask entry per image: {s.size} scores, "
                         f"{len(maps)} maps, {len(masks)} masks")
    used = [i for i in range(s.size) if not labels[i] or masks[i] is not None]
    if not any(labels[i] for i in used):
        return evaluation
    for i in used:
        if not labels[i] and masks[i] is not None and np.asarray(masks[i]).any():
            raise ValueError(f"image {i} is of the normal type {normal_type!r} but its mask "
                             "marks defect pixels; fix its type or its mask")
    # Normal images count with an all-false mask, passed as None to avoid allocating it.
    pixel_maps = [maps[i] for i in used]
    pixel_masks = [masks[i] if labels[i] else None for i in used]
    evaluation.pixel_auroc = pixel_auroc(pixel_maps, pixel_masks)
    evaluation.pro = pro_score(pixel_maps, pixel_masks)
    return evaluation


def _check_types(defect_types: Sequence[str], n: int) -> np.ndarray:
    types = np.asarray([str(t) for t in defect_types], dtype=object)
    if types.shape != (n,):
        raise ValueError(f"need one defect type per score: {n} scores, "
                         f"{len(defect_types)} defect types")
    return types


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator / denominator) if denominator else 0.0
