"""Anomaly detection as a task: normal or anomaly per image, with a heat map."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from vitkit.anomaly.detector import REFERENCE, AnomalyDetector, load_anomaly_detector
from vitkit.bundle import Bundle
from vitkit.errors import BundleError


class ServedAnomaly:
    """An anomaly bundle behind the service (see :class:`vitkit.tasks.base.ServedTask`)."""

    kind = "anomaly"
    picture_key = "map_png"  # the heat map over the image, with ?maps=1
    labels = ["normal", "anomaly"]
    extra_outputs: tuple[tuple[str, str], ...] = ()

    def __init__(self, detector: AnomalyDetector, variant: str) -> None:
        self.detector, self.variant = detector, variant

    @property
    def input_size(self) -> tuple[int, int]:
        height, width = self.detector.input_size
        return int(height), int(width)

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return self.detector.method.prepare(image)

    @torch.no_grad()
    def infer(self, batch: list[torch.Tensor]) -> list[dict[str, Any]]:
        """``label ("normal"|"anomaly"), score (0.5 = threshold), raw_score``; ``_map``, the
        low-resolution map, is drawn only when a client asks (:meth:`overlay_png`)."""
        raw, maps = self.detector.method.score(torch.stack(batch))
        verdicts = self.detector.verdicts([""] * len(batch), raw)
        return [{"label": v.label, "score": v.score, "raw_score": v.raw_score, "_map": m}
                for v, m in zip(verdicts, maps.cpu(), strict=True)]

    def overlay_png(self, image: Image.Image, answer: dict[str, Any], max_side: int = 512
                    ) -> bytes | None:
        """The anomaly map over the image (0.5 = threshold outlined), as PNG bytes."""
        from vitkit.anomaly.overlay import heatmap_overlay, png_bytes

        shown = image.copy()
        shown.thumbnail((max_side, max_side))
        full = self.detector.full_maps(answer["_map"][None], [shown.size])[0]
        return png_bytes(heatmap_overlay(shown, full, 0.0, 1.0, threshold=0.5))

    def drift_reference(self) -> tuple[Any, float] | None:
        return None


class AnomalyTask:
    name = "anomaly"
    accuracy_key = "auroc"

    def serve(self, bundle: Bundle, variant: str | None = None) -> ServedAnomaly:
        if variant not in (None, REFERENCE):
            raise BundleError(f"{bundle} is an anomaly detector: it runs as {REFERENCE} "
                              f"only, not {variant}.")
        return ServedAnomaly(load_anomaly_detector(bundle, "cpu"), REFERENCE)


TASK = AnomalyTask()
