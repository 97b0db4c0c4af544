"""Drift in production: the live model's recent embeddings against the bundle's reference.

Every ``every`` answers, the last ``window`` embeddings (with their predicted classes and
"unknown" verdicts) go through the same tests as `vitkit drift` (feature MMD permutation test,
class-mix test, OOD share), in a worker thread; the result feeds ``vitkit_drift`` in /metrics
and ``GET /v1/drift``. Bundles without an OOD fit have no reference, hence no monitor.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from vitkit.ood.detector import DriftReference
from vitkit.ood.drift import class_mix_test, mmd_permutation_test, verdict


class DriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window: int = Field(300, ge=10, description="recent answers compared with the reference")
    every: int = Field(100, ge=1, description="answers between two checks")
    permutations: int = Field(200, ge=20, description="permutations of the feature test")
    alpha: float = Field(0.01, gt=0, lt=1)


class DriftMonitor:
    def __init__(self, reference: DriftReference, labels: list[str],
                 expected_ood_share: float | None, config: DriftConfig) -> None:
        self.reference = reference
        self.labels = labels
        self.expected_ood_share = expected_ood_share
        self.config = config
        self._features: deque[torch.Tensor] = deque(maxlen=config.window)
        self._classes: deque[int] = deque(maxlen=config.window)
        self._unknown: deque[bool] = deque(maxlen=config.window)
        self._since_check = 0
        self._lock = threading.Lock()
        self.report: dict[str, Any] | None = None
        self.checks = 0

    def observe(self, features: torch.Tensor, predicted: int, unknown: bool) -> bool:
        """Adds one answer; True when a check is due (call :meth:`check` off the event loop)."""
        with self._lock:
            self._features.append(features.detach().float().cpu())
            self._classes.append(predicted)
            self._unknown.append(unknown)
            self._since_check += 1
            due = self._since_check >= self.config.every and len(self._features) >= 10
            if due:
                self._since_check = 0
            return due

    def check(self) -> dict[str, Any]:
        with self._lock:
            features = torch.stack(list(self._features))
            classes = list(self._classes)
            flagged = sum(self._unknown)
        started = time.perf_counter()
        feature_test = mmd_permutation_test(self.reference.features, features,
                                            self.config.permutations, seed=self.checks)
        counts = torch.bincount(torch.tensor(classes), minlength=len(self.labels))
        mix = class_mix_test(counts.tolist(), self.reference.class_counts.tolist(), self.labels)
        ood = (flagged, self.expected_ood_share) if self.expected_ood_share is not None else None
        report = verdict(len(classes), feature_test, mix, ood, self.config.alpha).to_dict()
        report.update(checked_at=time.time(), seconds=round(time.perf_counter() - started, 3),
                      window=len(classes))
        self.report = report
        self.checks += 1
        return report
