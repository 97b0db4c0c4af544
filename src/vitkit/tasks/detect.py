"""Object detection as a task: labelled boxes per image.

- :class:`DetectStep` tells :class:`~vitkit.tasks.trainer.StagedTrainer` how a detector
  trains (the sum of torchvision's loss terms) and is measured (COCO mAP@0.5 on the
  validation images; per-class AP in the details).
- :class:`ServedDetector` is a detection bundle behind the service: an answer per image is
  ``{"label": the top box's class or "none", "score": its score or 0, "boxes": [{"label",
  "score", "box": [x1, y1, x2, y2]}]}``, boxes in the image's own pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from vitkit.bundle import Bundle
from vitkit.detect.evaluate import evaluate_bundle, score_batches
from vitkit.detect.model import encoder_parameters
from vitkit.detect.predict import (
    BoxPrediction,
    DetectionRuntime,
    Detector,
    detect_record,
    draw_boxes,
    load_detector,
)
from vitkit.predictor.runtimes import Runtime
from vitkit.tasks.trainer import Evaluation

NO_OBJECT = "none"


def _plain_targets(targets: Sequence[dict[str, torch.Tensor]], device: torch.device
                   ) -> list[dict[str, torch.Tensor]]:
    """Targets as plain tensors on ``device`` (torchvision's losses index and concatenate
    them; a BoundingBoxes tv_tensor would re-wrap some results)."""
    return [{"boxes": t["boxes"].as_subclass(torch.Tensor).to(device),
             "labels": t["labels"].to(device)} for t in targets]


class DetectStep:
    """How :class:`~vitkit.tasks.trainer.StagedTrainer` trains and measures a detector.

    Args:
        classes: Class names (label ``i`` is ``classes[i]`` after the offset).
        label_offset: What the dataset added to each label (1 for Faster R-CNN).
    """

    metric_name = "map_50"

    def __init__(self, classes: Sequence[str], label_offset: int = 0) -> None:
        self.classes = list(classes)
        self.label_offset = label_offset

    def encoder_parameters(self, model: nn.Module) -> Sequence[nn.Parameter]:
        return encoder_parameters(_unwrapped(model))

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device
                      ) -> tuple[torch.Tensor, int]:
        images, targets = batch
        losses = model([image.to(device) for image in images], _plain_targets(targets, device))
        return torch.stack(list(losses.values())).sum(), len(images)

    def evaluate(self, model: nn.Module, batches: Iterable[Any], device: torch.device,
                 step: Callable[[], None] | None = None) -> Evaluation:
        offset = self.label_offset

        def predict(images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
            found = model([image.to(device) for image in images])
            return [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - offset}
                    for d in found]

        scores = score_batches(predict, batches, self.classes, offset, step)
        return Evaluation(metric=scores.map_50, details={
            "map_50_95": scores.map_50_95, "per_class": scores.per_class,
            "n_images": scores.n_images})


def _unwrapped(model: Any) -> Any:
    """The detector inside a DistributedDataParallel wrapper (Accelerate's on several GPUs)."""
    return model.module if hasattr(model, "module") and hasattr(model.module, "backbone") \
        else model


class ServedDetector:
    """A detection bundle behind the service (see :class:`vitkit.tasks.base.ServedTask`).

    :meth:`prepare` keeps the image at its own size (as a uint8 tensor) so that the boxes
    come back in its pixels; :meth:`infer` resizes each to the detector's input.
    """

    kind = "detect"
    picture_key = "boxes_png"  # the boxes drawn over the image, when a client asks
    extra_outputs: tuple[tuple[str, str], ...] = (("boxes", "BYTES"),)  # JSON text in v2

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self.variant = detector.variant
        self.labels = list(detector.labels)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.detector.size, self.detector.size

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return self.detector.prepare(image)

    @torch.no_grad()
    def infer(self, batch: list[torch.Tensor]) -> list[dict[str, Any]]:
        return [answer(boxes) for boxes in self.detector.detect(batch)]

    def overlay_png(self, image: Image.Image, answer: dict[str, Any]) -> bytes | None:
        import io

        buffer = io.BytesIO()
        draw_boxes(image, answer.get("boxes") or [], self.labels).save(buffer, format="PNG")
        return buffer.getvalue()

    def drift_reference(self) -> tuple[Any, float] | None:
        return None


def answer(boxes: Sequence[BoxPrediction]) -> dict[str, Any]:
    """One image's answer: the top box's class and score (``"none"`` and 0 without one),
    and every box."""
    top = boxes[0] if boxes else None
    return {"label": top.label if top else NO_OBJECT,
            "score": round(top.score, 4) if top else 0.0,
            "boxes": [b.to_dict() for b in boxes]}


class DetectTask:
    """Detection for the service, ``vitkit bench`` and ``vitkit optimize`` (see
    :class:`vitkit.tasks.base.MeasuredTask`)."""

    name = "detect"
    accuracy_key = "map_50"

    def serve(self, bundle: Bundle, variant: str | None = None) -> ServedDetector:
        return ServedDetector(load_detector(bundle, variant, "cpu"))

    def evaluate(self, bundle: Bundle, data: str, **options: Any) -> dict[str, Any]:
        """The ``vitkit detect eval --json`` record; ``options``: ``split``, ``variant``,
        ``batch_size``, ``device``, ``progress`` (see
        :func:`~vitkit.detect.evaluate.evaluate_bundle`)."""
        return evaluate_bundle(bundle, data, **options)

    def runtime(self, bundle: Bundle, variant: str | None = None, device: str = "cpu",
                threads: int | None = None) -> Runtime:
        """The variant's detector, network and decoding: ``(B, 3, S, S)`` RGB 0..1 in, an
        ``(N, 7)`` tensor of detections out (:class:`~vitkit.detect.predict.DetectionRuntime`)."""
        return DetectionRuntime(load_detector(bundle, variant, device, threads))

    def input_size(self, bundle: Bundle) -> tuple[int, int]:
        size = detect_record(bundle).size
        return size, size

    def validation_data(self, bundle: Bundle) -> str | None:
        """The annotated data the bundle was trained on, if it is still there (its evaluation
        then uses the validation images training held out)."""
        data = (bundle.meta.train.get("config") or {}).get("data")
        return str(data) if isinstance(data, str) and data and Path(data).exists() else None


TASK = DetectTask()
