"""Detection metrics: COCO mAP@0.5, mAP@0.5:0.95, per-class AP and precision-recall curves.

torchmetrics' :class:`MeanAveragePrecision` with the COCO evaluator's C++ port
(``faster_coco_eval``), or ``pycocotools`` when only that is installed: the numbers are
COCO's own (101-point interpolated precision, up to 100 detections per image, every area).
Tensors in, numbers out; no files.

Labels are class indices ``0..C-1`` in both the predictions and the targets (a Faster R-CNN's
background offset is removed by the caller). A class with no box in the targets has no AP
(``None``): COCO leaves it out of the mean rather than counting it as 0 or 1.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from vitkit.errors import VitkitError

PR_POINTS = 101  # COCO's recall thresholds 0, 0.01, …, 1
_ALL_AREAS, _MAX_DETS = 0, -1  # indices into COCO's precision array: area "all", 100 dets


def coco_backend() -> Literal["faster_coco_eval", "pycocotools"]:
    """``faster_coco_eval`` when installed, else ``pycocotools``; a clear error without
    either (both compute COCO's numbers)."""
    if importlib.util.find_spec("faster_coco_eval") is not None:
        return "faster_coco_eval"
    if importlib.util.find_spec("pycocotools") is not None:
        return "pycocotools"
    raise VitkitError("detection metrics need faster-coco-eval (or pycocotools) and "
                      "torchmetrics; pip install 'vitkit[detect]'.")


@dataclass
class DetectionScores:
    """COCO box metrics over a set of images.

    Attributes:
        map_50: Mean AP at IoU 0.5 over the classes that have boxes in the targets.
        map_50_95: Mean AP over IoU 0.5, 0.55, …, 0.95 (COCO's headline mAP).
        per_class: ``{name: {"ap_50", "ap_50_95"}}``, ``None`` for a class without target boxes.
        pr_curves: ``{name: {"recall": [...], "precision": [...]}}`` at IoU 0.5 (COCO's 101
            recall points; precision ``0`` where that recall is never reached), for classes
            with target boxes.
        n_images: Images seen.
    """

    map_50: float
    map_50_95: float
    per_class: dict[str, dict[str, float | None]]
    pr_curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    n_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """tv_tensors (BoundingBoxes) as plain tensors on the CPU, so the metric never dispatches
    on their type."""
    return tensor.detach().as_subclass(torch.Tensor).cpu()


class DetectionMetric:
    """Accumulates predictions and targets, then :meth:`compute` gives :class:`DetectionScores`.

    Args:
        classes: Class names; label ``i`` is ``classes[i]``.
    """

    def __init__(self, classes: Sequence[str]) -> None:
        from torchmetrics.detection import MeanAveragePrecision

        self.classes = list(classes)
        self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox",
                                           class_metrics=True, extended_summary=True,
                                           backend=coco_backend())
        self.n_images = 0

    def update(self, predictions: Sequence[Mapping[str, torch.Tensor]],
               targets: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """One batch: predictions ``{"boxes" (N, 4) XYXY, "scores" (N,), "labels" (N,)}`` and
        targets ``{"boxes" (M, 4), "labels" (M,)}``, in the same pixel coordinates."""
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
        preds = [{"boxes": _plain(p["boxes"]).float().reshape(-1, 4),
                  "scores": _plain(p["scores"]).float().reshape(-1),
                  "labels": _plain(p["labels"]).long().reshape(-1)} for p in predictions]
        truth = [{"boxes": _plain(t["boxes"]).float().reshape(-1, 4),
                  "labels": _plain(t["labels"]).long().reshape(-1)} for t in targets]
        self.metric.update(preds, truth)
        self.n_images += len(targets)

    def compute(self) -> DetectionScores:
        """The scores; with no target box at all, every AP is ``None`` and the means 0."""
        result = self.metric.compute()
        present = [int(c) for c in result["classes"].reshape(-1).tolist()]
        precision = result["precision"]  # (T iou thresholds, R=101, K present, A areas, M)
        has_truth = _classes_with_truth(self.metric)
        per_class: dict[str, dict[str, float | None]] = {
            name: {"ap_50": None, "ap_50_95": None} for name in self.classes}
        curves: dict[str, dict[str, list[float]]] = {}
        recall = torch.linspace(0, 1, PR_POINTS)
        for k, index in enumerate(present):
            if not 0 <= index < len(self.classes) or index not in has_truth:
                continue
            name = self.classes[index]
            at_50 = precision[0, :, k, _ALL_AREAS, _MAX_DETS]  # (101,), -1 where undefined
            all_iou = precision[:, :, k, _ALL_AREAS, _MAX_DETS]
            per_class[name] = {"ap_50": _mean_defined(at_50),
                               "ap_50_95": _mean_defined(all_iou)}
            curves[name] = {"recall": [round(float(r), 2) for r in recall],
                            "precision": [round(max(float(p), 0.0), 4) for p in at_50]}
        scored = [c for c in per_class.values() if c["ap_50"] is not None]
        map_50 = sum(float(c["ap_50"] or 0.0) for c in scored) / len(scored) if scored else 0.0
        map_all = (sum(float(c["ap_50_95"] or 0.0) for c in scored) / len(scored)
                   if scored else 0.0)
        return DetectionScores(map_50=map_50, map_50_95=map_all, per_class=per_class,
                               pr_curves=curves, n_images=self.n_images)


def _mean_defined(values: torch.Tensor) -> float | None:
    """COCO's summary: the mean of the entries above -1 (-1 marks "no such case")."""
    defined = values[values > -1]
    return float(defined.mean()) if defined.numel() else None


def _classes_with_truth(metric: Any) -> set[int]:
    """The labels that occur in the accumulated targets (torchmetrics keeps them as a list
    of per-image label tensors)."""
    labels = getattr(metric, "groundtruth_labels", [])
    return {int(v) for t in labels for v in t.reshape(-1).tolist()}


def image_matches(prediction: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                  score_threshold: float, iou: float = 0.5) -> dict[str, int]:
    """One image's boxes at a score threshold, matched greedily (best score first) to target
    boxes of the same class at IoU >= ``iou``: ``{"truth", "predicted", "matched", "missed",
    "false"}`` (``missed``: target boxes left unmatched; ``false``: predictions left unmatched).
    For the report's gallery, not a COCO figure."""
    from torchvision.ops import box_iou

    keep = _plain(prediction["scores"]).reshape(-1) >= score_threshold
    boxes = _plain(prediction["boxes"]).float().reshape(-1, 4)[keep]
    labels = _plain(prediction["labels"]).long().reshape(-1)[keep]
    order = _plain(prediction["scores"]).reshape(-1)[keep].argsort(descending=True)
    truth_boxes = _plain(target["boxes"]).float().reshape(-1, 4)
    truth_labels = _plain(target["labels"]).long().reshape(-1)
    overlaps = (box_iou(boxes, truth_boxes) if len(boxes) and len(truth_boxes)
                else torch.zeros(len(boxes), len(truth_boxes)))
    taken = torch.zeros(len(truth_boxes), dtype=torch.bool)
    matched = 0
    for i in order.tolist():
        candidates = (truth_labels == labels[i]) & ~taken & (overlaps[i] >= iou)
        if candidates.any():
            best = int(torch.where(candidates, overlaps[i], torch.full_like(overlaps[i], -1.0))
                       .argmax())
            taken[best] = True
            matched += 1
    return {"truth": len(truth_boxes), "predicted": len(boxes), "matched": matched,
            "missed": len(truth_boxes) - matched, "false": len(boxes) - matched}
