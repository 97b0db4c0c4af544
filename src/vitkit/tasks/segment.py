"""The segmentation task: its step in the staged loop, its served model and its evaluation.

- :class:`SegmentStep` tells :class:`~vitkit.tasks.trainer.StagedTrainer` how a batch of
  ``(images (B, 3, H, W), masks (B, H, W))`` becomes a loss (Dice + cross-entropy) and the
  validation batches one figure: the mean foreground Dice at the training size.
- :data:`TASK` is what the doors (serve, bench, optimize) reach through
  :func:`~vitkit.tasks.base.get_task`: ``serve`` returns a :class:`ServedSegmenter`, whose
  answer per image is ``{"label", "score", "classes"}`` and, when a client asks for pictures,
  ``mask_png`` (see its ``infer``); ``evaluate`` the ``vitkit segment eval --json`` record,
  whose ``dice`` is the task's ``accuracy_key``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vitkit.bundle import Bundle
from vitkit.data.masks import IGNORE_INDEX
from vitkit.predictor.runtimes import Runtime
from vitkit.segment.evaluate import evaluate_bundle
from vitkit.segment.loss import DiceCELoss
from vitkit.segment.metrics import SegmentationMeter
from vitkit.segment.model import read_record
from vitkit.segment.predict import (
    SegmentPredictor,
    class_shares,
    dominant_label,
    mask_png,
    overlay,
    resize_mask,
)
from vitkit.tasks.trainer import Evaluation


class SegmentStep:
    """The segmentation step of the staged loop (:class:`~vitkit.tasks.trainer.TaskStep`).

    The encoder is smp's ``model.encoder`` (the pretrained timm features), frozen in the head
    stage; the decoder and the segmentation head train from the start.
    """

    metric_name = "dice"

    def __init__(self, classes: Sequence[str], ignore_index: int = IGNORE_INDEX,
                 loss: nn.Module | None = None) -> None:
        self.classes = list(classes)
        self.ignore_index = ignore_index
        self.loss = loss if loss is not None else DiceCELoss(ignore_index=ignore_index)

    def encoder_parameters(self, model: nn.Module) -> Sequence[nn.Parameter]:
        return list(_unwrap(model).encoder.parameters())

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device
                      ) -> tuple[torch.Tensor, int]:
        images, masks = batch
        logits = model(images.to(device))  # (B, C, H, W)
        return self.loss(logits, masks.to(device)), len(images)

    def evaluate(self, model: nn.Module, batches: Iterable[Any], device: torch.device,
                 step: Callable[[], None] | None = None) -> Evaluation:
        """Mean foreground Dice over the validation batches (0 when no foreground class has
        one), the mean loss per image, and ``details``: IoU, pixel accuracy, per class."""
        meter = SegmentationMeter(self.classes, self.ignore_index)
        loss_sum, images = 0.0, 0
        for batch_images, masks in batches:
            logits = model(batch_images.to(device))
            target = masks.to(device)
            loss_sum += float(self.loss(logits, target)) * len(batch_images)
            images += len(batch_images)
            meter.update(logits, target)
            if step is not None:
                step()
        scores = meter.compute()
        return Evaluation(metric=scores.dice or 0.0, loss=loss_sum / max(images, 1),
                          details={"iou": scores.iou, "pixel_accuracy": scores.pixel_accuracy,
                                   "per_class": scores.per_class})


def _unwrap(model: nn.Module) -> Any:
    """The smp model, also inside a DistributedDataParallel wrapper (``.module``)."""
    return model if hasattr(model, "encoder") else getattr(model, "module", model)


class ServedSegmenter:
    """A segmentation bundle as the service sees it (:class:`~vitkit.tasks.base.ServedTask`).

    The answer is small (label, score, class shares); the mask itself comes only when a
    client asks for pictures: under ``mask_png``, a palette PNG at the image's own size whose
    pixel values are the class indices (an image viewer shows the classes in colour).
    """

    kind = "segment"
    picture_key: str | None = "mask_png"
    extra_outputs: tuple[tuple[str, str], ...] = (("classes", "BYTES"),)  # JSON text in v2

    def __init__(self, predictor: SegmentPredictor) -> None:
        self.predictor = predictor
        self.variant = predictor.variant.name
        self.labels = list(predictor.labels)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.predictor.input_size

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return self.predictor.transform(image)

    @torch.no_grad()
    def infer(self, batch: list[torch.Tensor]) -> list[dict[str, Any]]:
        """One answer per prepared image:

        - ``label``: the non-background class covering most of the image, or the
          background's name when there is none;
        - ``score``: the model's mean probability for ``label`` over the pixels it gave
          that class (how sure it is of those pixels), 0..1;
        - ``classes``: class name -> share of the image it covers, 0..1;
        - ``_mask``: the class per pixel at the model's input size, uint8, for
          :meth:`overlay_png` (never sent).
        """
        probabilities = self.predictor.logits(torch.stack(batch)).softmax(1)  # (B, C, H, W)
        confidence, masks = probabilities.max(1)  # (B, H, W) each
        answers = []
        for mask, sure in zip(masks.to(torch.uint8).numpy(), confidence, strict=True):
            shares = class_shares(mask, self.labels)
            label = dominant_label(shares)
            chosen = torch.from_numpy(mask == self.labels.index(label))
            score = float(sure[chosen].mean()) if bool(chosen.any()) else 0.0
            answers.append({"label": label, "score": round(score, 6), "classes": shares,
                            "_mask": mask})
        return answers

    def overlay_png(self, image: Image.Image, answer: dict[str, Any]) -> bytes | None:
        """The answer's mask as a palette PNG at the image's own size (nearest-neighbour
        scaling from the model's size: the image was resized whole, so it lies over it)."""
        mask = resize_mask(np.asarray(answer["_mask"]), image.size)
        return mask_png(mask, len(self.labels))

    def tinted_png(self, image: Image.Image, answer: dict[str, Any]) -> bytes:
        """The classes tinted over the image (RGB PNG, the image's size), for people."""
        mask = resize_mask(np.asarray(answer["_mask"]), image.size)
        buffer = io.BytesIO()
        overlay(image, mask, len(self.labels)).save(buffer, format="PNG")
        return buffer.getvalue()

    def drift_reference(self) -> tuple[Any, float] | None:
        """Segmentation bundles carry no drift reference (yet)."""
        return None


class SegmentTask:
    """The segmentation task (:class:`~vitkit.tasks.base.Task`)."""

    name = "segment"
    accuracy_key = "dice"

    def serve(self, bundle: Bundle, variant: str | None = None) -> ServedSegmenter:
        return ServedSegmenter(SegmentPredictor.load(bundle, variant=variant))

    def evaluate(self, bundle: Bundle, data: str, **options: Any) -> dict[str, Any]:
        """The ``vitkit segment eval --json`` record; ``options``: ``split``, ``batch_size``,
        ``variant``, ``device``, ``progress`` (see
        :func:`~vitkit.segment.evaluate.evaluate_bundle`). ``dice`` is None when neither
        the masks nor the predictions hold any foreground pixel."""
        return evaluate_bundle(bundle, data, **options)

    def runtime(self, bundle: Bundle, variant: str | None = None, device: str = "cpu",
                threads: int | None = None) -> Runtime:
        """The variant's runtime: preprocessed ``(B, 3, H, W)`` in, logits ``(B, C, H, W)``
        out."""
        return SegmentPredictor.load(bundle, variant, device, threads).runtime

    def input_size(self, bundle: Bundle) -> tuple[int, int]:
        return read_record(bundle.meta, bundle).input_size

    def validation_data(self, bundle: Bundle) -> str | None:
        """The folder the bundle was trained on, if it is still there (its evaluation then
        uses the validation pairs training held out)."""
        data = (bundle.meta.train.get("config") or {}).get("data")
        return str(data) if isinstance(data, str) and data and Path(data).is_dir() else None


TASK = SegmentTask()
