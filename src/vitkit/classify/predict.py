"""The Predictor: a bundle's model with its labels and preprocessing, ready to call."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitkit.backbones import BackboneSpec, ImageClassifier, rebuild
from vitkit.bundle import BundleMeta, load_weights, read_meta
from vitkit.data import ImageProblem, Preprocessing, eval_transform, load_rgb
from vitkit.data.files import find_images
from vitkit.errors import VitkitError


@dataclass
class Prediction:
    path: str
    label: str
    score: float
    topk: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "label": self.label, "score": self.score, "topk": self.topk}


@dataclass
class PredictionError:
    path: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.error}


class Predictor:
    """``predictor(batch) -> logits`` plus everything needed to feed it real images."""

    def __init__(self, model: ImageClassifier, meta: BundleMeta, device: str = "cpu") -> None:
        self.model = model.eval().to(device, memory_format=torch.channels_last)
        self.meta = meta
        self.device = torch.device(device)
        self.labels: list[str] = list(meta.labels)
        self.preprocessing = Preprocessing.model_validate(meta.preprocessing)
        self.transform = eval_transform(self.preprocessing)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for a preprocessed batch (B, 3, H, W)."""
        return self.model(batch.to(self.device)).float().cpu()

    def predict_paths(
        self, paths: Sequence[Path], top_k: int = 5, batch_size: int = 32
    ) -> Iterator[Prediction | PredictionError]:
        """Predicts images in batches; an unreadable file yields an error, not an exception."""
        k = max(1, min(top_k, len(self.labels)))
        pending: list[tuple[Path, torch.Tensor]] = []
        for path in paths:
            try:
                image, _ = load_rgb(path)
            except ImageProblem as problem:
                yield PredictionError(str(path), problem.reason)
                continue
            pending.append((path, self.transform(image)))
            if len(pending) == batch_size:
                yield from self._predict_batch(pending, k)
                pending = []
        if pending:
            yield from self._predict_batch(pending, k)

    def _predict_batch(
        self, items: list[tuple[Path, torch.Tensor]], k: int
    ) -> Iterator[Prediction]:
        probs = self(torch.stack([t for _, t in items])).softmax(dim=1)
        scores, indices = probs.topk(k, dim=1)
        for (path, _), row_scores, row_idx in zip(items, scores, indices, strict=True):
            topk = [{"label": self.labels[int(i)], "score": float(s)}
                    for s, i in zip(row_scores, row_idx, strict=True)]
            yield Prediction(str(path), topk[0]["label"], topk[0]["score"], topk)


def load(path: str | Path, device: str = "cpu") -> Predictor:
    """Loads a bundle as a :class:`Predictor` (safetensors weights; nothing is unpickled)."""
    meta = read_meta(path)
    if meta.task != "classify":
        raise VitkitError(f"{path} is a '{meta.task}' bundle, not a classifier.")
    model = rebuild(BackboneSpec.from_dict(meta.backbone), num_classes=len(meta.labels))
    load_weights(path, model.model)
    return Predictor(model, meta, device=device)


def expand_paths(inputs: Sequence[str]) -> tuple[list[Path], list[PredictionError]]:
    """Files as given, folders searched recursively for images, globs expanded.

    Returns the image paths (in a stable order, without duplicates) and an error per input that
    matched nothing.
    """
    found, unmatched = find_images(inputs)
    return found, [PredictionError(item, "no such file, or no images matched")
                   for item in unmatched]
