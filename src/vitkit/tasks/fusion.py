"""The image + audio task: its step in the staged loop and its served model.

- :class:`FusionStep` tells :class:`~vitkit.tasks.trainer.StagedTrainer` how a
  :class:`~vitkit.data.paired_inputs.PairedBatch` becomes a loss (cross-entropy after
  modality dropout) and the validation batches one figure: the mean of the accuracies with
  both inputs, the image alone and the audio alone, so the epoch kept is one where each input
  alone still predicts, not only the pair.
- :data:`TASK` is what the doors reach through :func:`~vitkit.tasks.base.get_task`: ``serve``
  returns a :class:`ServedFusion`, which answers an image alone (the v1 and v2 image paths),
  or a :class:`~vitkit.tasks.base.PairedUpload` (an image and/or a recording, v1 multipart
  fields ``image`` and ``audio``) with ``{"label", "score", "topk", "modality"}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from vitkit.bundle import Bundle
from vitkit.data.paired_inputs import PairedBatch, PairedInput
from vitkit.errors import BundleError
from vitkit.fusion.dropout import modality_dropout
from vitkit.fusion.model import FusionClassifier
from vitkit.fusion.predict import FusionPredictor
from vitkit.tasks.base import PairedUpload
from vitkit.tasks.trainer import Evaluation

MODES = ("both", "image", "audio")


def _unwrap(model: nn.Module) -> FusionClassifier:
    """The fusion model, also inside a DistributedDataParallel wrapper (``.module``)."""
    inner = model if isinstance(model, FusionClassifier) else getattr(model, "module", model)
    if not isinstance(inner, FusionClassifier):
        raise TypeError(f"expected a FusionClassifier, got {type(model).__name__}")
    return inner


class FusionStep:
    """The image + audio step of the staged loop (:class:`~vitkit.tasks.trainer.TaskStep`).

    The encoder is the pretrained image backbone, frozen in the head stage and slowed in the
    full one; the audio encoder (trained from scratch), the projections and the head train
    from the start. An image backbone without pretrained weights (``pretrained_image``
    False) has nothing to keep: it trains from the start at the full rate, like the rest.
    """

    metric_name = "mean_accuracy"

    def __init__(self, modality_dropout: float, pretrained_image: bool = True) -> None:
        self.modality_dropout = modality_dropout
        self.pretrained_image = pretrained_image
        self.loss = nn.CrossEntropyLoss()

    def encoder_parameters(self, model: nn.Module) -> Sequence[nn.Parameter]:
        if not self.pretrained_image:
            return []
        return list(_unwrap(model).image_encoder.parameters())

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device
                      ) -> tuple[torch.Tensor, int]:
        batch = PairedBatch(*batch).to(device)
        has_image, has_audio = modality_dropout(batch.has_image, batch.has_audio,
                                                self.modality_dropout)
        logits = model(batch.images, has_image, batch.mels, batch.mel_lengths, has_audio)
        return self.loss(logits, batch.targets), len(batch.targets)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Any], device: torch.device,
                 step: Callable[[], None] | None = None) -> Evaluation:
        """Accuracy with both inputs, the image alone and the audio alone (each over the rows
        that have what it needs); the metric is their mean, the loss the one with both."""
        fusion = _unwrap(model)
        correct = dict.fromkeys(MODES, 0)
        total = dict.fromkeys(MODES, 0)
        loss_sum = 0.0
        for raw in batches:
            batch = PairedBatch(*raw).to(device)
            image, audio = fusion.encode(batch.images, batch.mels, batch.mel_lengths)
            none = torch.zeros_like(batch.has_image)
            for mode, has_image, has_audio, rows in (
                    ("both", batch.has_image, batch.has_audio, torch.ones_like(none)),
                    ("image", batch.has_image, none, batch.has_image),
                    ("audio", none, batch.has_audio, batch.has_audio)):
                logits = fusion.classify(image, audio, has_image, has_audio)
                hits = (logits.argmax(1) == batch.targets) & rows
                correct[mode] += int(hits.sum())
                total[mode] += int(rows.sum())
                if mode == "both":
                    loss_sum += float(self.loss(logits, batch.targets)) * len(batch.targets)
            if step is not None:
                step()
        accuracy = {mode: correct[mode] / total[mode] for mode in MODES if total[mode]}
        return Evaluation(metric=sum(accuracy.values()) / max(len(accuracy), 1),
                          loss=loss_sum / max(total["both"], 1),
                          details={f"accuracy_{mode}": value for mode, value in accuracy.items()})


class ServedFusion:
    """An image + audio bundle behind the service (:class:`~vitkit.tasks.base.ServedTask`).

    It takes what the image tasks take — a decoded image, a prepared image tensor (v2 FP32)
    — and also a :class:`~vitkit.tasks.base.PairedUpload` (:meth:`prepare_pair`): the model
    answers from whatever inputs an example has.
    """

    kind = "fusion"
    picture_key: str | None = None
    extra_outputs: tuple[tuple[str, str], ...] = (("modality", "BYTES"),)

    def __init__(self, predictor: FusionPredictor, top_k: int = 3) -> None:
        self.predictor = predictor
        self.top_k = top_k
        self.variant = predictor.variant_name
        self.labels = list(predictor.labels)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.predictor.input_size

    def prepare(self, image: Image.Image) -> PairedInput:
        return PairedInput(self.predictor.prepare_image(image), None)

    def prepare_pair(self, pair: PairedUpload) -> PairedInput:
        return self.predictor.prepare(pair.image, pair.audio)

    @torch.no_grad()
    def infer(self, batch: list[Any]) -> list[dict[str, Any]]:
        """``label, score, topk, modality`` per example (``modality``: the inputs it had)."""
        inputs = [item if isinstance(item, PairedInput) else PairedInput(item, None)
                  for item in batch]  # a bare tensor: a v2 FP32 image
        return [{"label": p.label, "score": p.score, "topk": p.topk, "modality": p.modality}
                for p in self.predictor.predict(inputs, self.top_k)]

    def overlay_png(self, image: Image.Image, answer: dict[str, Any]) -> bytes | None:
        return None

    def drift_reference(self) -> tuple[Any, float] | None:
        """Image + audio bundles carry no drift reference (yet)."""
        return None


class FusionTask:
    """The image + audio task (:class:`~vitkit.tasks.base.Task`)."""

    name = "fusion"
    accuracy_key = "accuracy"

    def serve(self, bundle: Bundle, variant: str | None = None) -> ServedFusion:
        if variant not in (None, FusionPredictor.variant_name):
            raise BundleError(f"an image + audio bundle has one variant, "
                              f"{FusionPredictor.variant_name}; got {variant!r}.")
        return ServedFusion(FusionPredictor.load(bundle))


TASK = FusionTask()
