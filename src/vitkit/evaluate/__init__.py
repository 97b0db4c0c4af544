"""Evaluation: classification metrics and calibration (pure numpy, no IO)."""

from __future__ import annotations

from vitkit.evaluate.calibration import (
    ReliabilityBins,
    expected_calibration_error,
    reliability_bins,
)
from vitkit.evaluate.metrics import ClassificationMetrics, ClassMetrics, classification_metrics

__all__ = [
    "ClassMetrics",
    "ClassificationMetrics",
    "ReliabilityBins",
    "classification_metrics",
    "expected_calibration_error",
    "reliability_bins",
]
