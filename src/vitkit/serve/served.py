"""A bundle behind the service: classifier or anomaly detector, one interface.

``prepare`` turns a decoded image into the model's input tensor (run in the decoding thread
pool); ``infer`` runs a batch of them (run in the model's own worker thread) and returns one
JSON-ready answer per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vitkit.bundle import Bundle, BundleSource
from vitkit.errors import BundleError

CLASSIFY = "classify"
ANOMALY = "anomaly"


@dataclass
class ServedModel:
    name: str
    bundle: Path
    variant: str
    kind: str  # "classify" or "anomaly"
    version: str  # a short hash of the bundle's vitkit.json: changes with every new bundle
    labels: list[str]
    top_k: int = 5
    _predictor: Any = field(default=None, repr=False)
    _detector: Any = field(default=None, repr=False)
    _opened: Bundle | None = field(default=None, repr=False)  # vitkit.json as read at load

    @classmethod
    def load(cls, name: str, bundle: BundleSource, variant: str | None = None) -> ServedModel:
        """Loads a bundle (safetensors only, as everywhere), reading ``vitkit.json`` once:
        the version hash, the model and its OOD fit all come from that one reading.

        Raises:
            BundleError: Not a bundle, or a task the service does not know.
        """
        opened = Bundle.open(bundle)
        meta, version = opened.meta, opened.version
        if meta.task == CLASSIFY:
            from vitkit.predictor.predict import load

            predictor = load(opened, variant=variant)
            return cls(name, opened.path, predictor.variant.name, CLASSIFY, version,
                       list(predictor.labels), _predictor=predictor, _opened=opened)
        if meta.task == ANOMALY:
            if variant not in (None, "torch-fp32"):
                raise BundleError(f"{opened} is an anomaly detector: it runs as torch-fp32 "
                                  f"only, not {variant}.")
            from vitkit.anomaly.detector import load_anomaly_detector

            detector = load_anomaly_detector(opened, "cpu")
            return cls(name, opened.path, "torch-fp32", ANOMALY, version,
                       ["normal", "anomaly"], _detector=detector, _opened=opened)
        raise BundleError(f"{opened} is a '{meta.task}' bundle; the service serves classifiers "
                          "and anomaly detectors.")

    def prepare(self, image: Image.Image) -> torch.Tensor:
        if self._predictor is not None:
            return self._predictor.transform(image)
        return self._detector.method.prepare(image)

    @torch.no_grad()
    def infer(self, batch: list[torch.Tensor]) -> list[dict[str, Any]]:
        """One answer per prepared image: ``label, score, topk, unknown, ood_score`` for a
        classifier, ``label ("normal"|"anomaly"), score (0.5 = threshold), raw_score`` for an
        anomaly detector."""
        stacked = torch.stack(batch)
        if self._predictor is not None:
            names = [""] * len(batch)
            # "_features": the embedding for the drift monitor (never part of the answer).
            return [{"label": p.label, "score": p.score, "topk": p.topk,
                     "unknown": bool(p.ood), "ood_score": p.ood_score,
                     "_features": p.features,
                     "_class": self.labels.index(p.topk[0]["label"])}
                    for p in self._predictor.predict_batch(stacked, names, self.top_k,
                                                           keep_features=True)]
        raw, maps = self._detector.method.score(stacked)
        # "_map": the low-resolution map, turned into a PNG overlay only when a client asks
        # (see overlay_png); never part of the JSON answer.
        return [{"label": v.label, "score": v.score, "raw_score": v.raw_score, "_map": m}
                for v, m in zip(self._detector.verdicts([""] * len(batch), raw), maps.cpu(),
                                strict=True)]

    def overlay_png(self, image: Image.Image, patch_map: torch.Tensor, max_side: int = 512
                    ) -> bytes:
        """The anomaly map over the image (0.5 = threshold outlined), as PNG bytes."""
        from vitkit.anomaly.overlay import heatmap_overlay, png_bytes

        shown = image.copy()
        shown.thumbnail((max_side, max_side))
        full = self._detector.full_maps(patch_map[None], [shown.size])[0]
        return png_bytes(heatmap_overlay(shown, full, 0.0, 1.0, threshold=0.5))

    def warm(self, batch_sizes: tuple[int, ...] = (1, 8)) -> None:
        """Runs the model on gray images, so the first real request does not pay for lazy
        setup (runtime compilation, the OOD bank); ``/readyz`` waits for this."""
        gray = self.prepare(Image.new("RGB", (64, 64), (128, 128, 128)))
        for size in batch_sizes:
            self.infer([gray] * size)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the tensors :meth:`prepare` makes."""
        if self._predictor is not None:
            return tuple(self._predictor.preprocessing.input_size)  # type: ignore[return-value]
        return tuple(self._detector.input_size)  # type: ignore[return-value]

    def drift_monitor(self, config: Any) -> Any:
        """A drift monitor against the bundle's reference sample, or None (anomaly bundles,
        bundles without an OOD fit)."""
        if self._predictor is None:
            return None
        from vitkit.ood.detector import load_drift_reference
        from vitkit.serve.drift import DriftMonitor

        reference = load_drift_reference(self._opened or self.bundle)
        detector = self._predictor.ood
        if reference is None or detector is None:
            return None
        return DriftMonitor(reference, self.labels, detector.expected_ood_share, config)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "version": self.version,
                "variant": self.variant, "bundle": str(self.bundle), "labels": self.labels}
