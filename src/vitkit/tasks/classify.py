"""The classifier as a task: a class per image, with "unknown" from its OOD fit."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from vitkit.bundle import Bundle
from vitkit.predictor.predict import Predictor, load


class ServedClassifier:
    """A classifier bundle behind the service (see :class:`vitkit.tasks.base.ServedTask`)."""

    kind = "classify"
    picture_key = None  # no picture to draw
    extra_outputs = (("unknown", "BOOL"),)

    def __init__(self, bundle: Bundle, predictor: Predictor, top_k: int = 5) -> None:
        self.bundle, self.predictor, self.top_k = bundle, predictor, top_k
        self.variant = predictor.variant.name
        self.labels = list(predictor.labels)

    @property
    def input_size(self) -> tuple[int, int]:
        height, width = self.predictor.preprocessing.input_size
        return int(height), int(width)

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return self.predictor.prepare(image)

    @torch.no_grad()
    def infer(self, batch: list[torch.Tensor]) -> list[dict[str, Any]]:
        """``label, score, topk, unknown, ood_score`` per image; ``_features`` (the
        embedding) and ``_class`` feed the drift monitor."""
        names = [""] * len(batch)
        return [{"label": p.label, "score": p.score, "topk": p.topk,
                 "unknown": bool(p.ood), "ood_score": p.ood_score,
                 "_features": p.features,
                 "_class": self.labels.index(p.topk[0]["label"])}
                for p in self.predictor.predict_batch(torch.stack(batch), names, self.top_k,
                                                      keep_features=True)]

    def overlay_png(self, image: Image.Image, answer: dict[str, Any]) -> bytes | None:
        return None

    def drift_reference(self) -> tuple[Any, float] | None:
        """(the reference sample stored at OOD fit time, the expected unknown share)."""
        from vitkit.ood.detector import load_drift_reference

        reference = load_drift_reference(self.bundle)
        detector = self.predictor.ood
        if reference is None or detector is None:
            return None
        return reference, detector.expected_ood_share


class ClassifyTask:
    name = "classify"
    accuracy_key = "accuracy"

    def serve(self, bundle: Bundle, variant: str | None = None) -> ServedClassifier:
        return ServedClassifier(bundle, load(bundle, variant=variant))


TASK = ClassifyTask()
