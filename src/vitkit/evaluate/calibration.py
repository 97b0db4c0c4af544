"""Confidence calibration: expected calibration error and reliability-diagram bins.

Confidence is the top predicted probability; a prediction is correct when its arg-max
(lowest index on ties) equals the true class. Bins are equal-width on ``[0, 1]`` and
right-closed, ``(lo, hi]``, with the first bin also holding a confidence of exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitkit.evaluate._validate import check_n_bins, check_probs, check_targets


@dataclass
class ReliabilityBins:
    """Per-bin statistics for a reliability diagram.

    Attributes:
        edges: ``n_bins + 1`` bin edges from 0.0 to 1.0.
        counts: Number of samples whose confidence falls in each bin.
        accuracy: Fraction of correct predictions per bin, ``None`` for an empty bin.
        confidence: Mean confidence per bin, ``None`` for an empty bin.
    """

    edges: list[float]
    counts: list[int]
    accuracy: list[float | None]
    confidence: list[float | None]

    @property
    def n(self) -> int:
        """Total number of samples over all bins."""
        return sum(self.counts)

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted mean of ``|accuracy - confidence|``."""
        total = self.n
        if total == 0:
            return 0.0
        gap = sum(
            count * abs(acc - conf)
            for count, acc, conf in zip(self.counts, self.accuracy, self.confidence, strict=True)
            if count and acc is not None and conf is not None
        )
        return float(gap / total)

    def to_dict(self) -> dict:
        """Return a JSON-friendly dict (empty bins hold ``null``)."""
        return {
            "edges": list(self.edges),
            "counts": list(self.counts),
            "accuracy": list(self.accuracy),
            "confidence": list(self.confidence),
        }


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> ReliabilityBins:
    """Group predictions into equal-width confidence bins.

    Args:
        probs: ``(N, C)`` predicted class probabilities; rows sum to 1.
        y_true: ``(N,)`` integer true class indices.
        n_bins: Number of equal-width bins on ``[0, 1]``.

    Returns:
        The bin edges, counts, per-bin accuracy and per-bin mean confidence.

    Raises:
        ValueError: If the inputs have inconsistent shapes or invalid values.
    """
    p = check_probs(probs)
    y = check_targets(y_true, p.shape[0], p.shape[1])
    n_bins = check_n_bins(n_bins)
    return _bins(p, y, n_bins)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error (ECE) with equal-width confidence bins.

    ``ECE = sum_b (n_b / N) * |acc_b - conf_b|`` over the non-empty bins ``b``.

    Args:
        probs: ``(N, C)`` predicted class probabilities; rows sum to 1.
        y_true: ``(N,)`` integer true class indices.
        n_bins: Number of equal-width bins on ``[0, 1]``.

    Returns:
        The ECE, in ``[0, 1]``.

    Raises:
        ValueError: If the inputs have inconsistent shapes or invalid values.
    """
    return reliability_bins(probs, y_true, n_bins).ece


def _bins(p: np.ndarray, y: np.ndarray, n_bins: int) -> ReliabilityBins:
    """Compute reliability bins from already validated inputs."""
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" counts the interior edges strictly below each confidence -> (lo, hi] bins.
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(index, minlength=n_bins)
    correct_sum = np.bincount(index, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    accuracy: list[float | None] = []
    mean_conf: list[float | None] = []
    for count, hits, conf in zip(counts, correct_sum, conf_sum, strict=True):
        accuracy.append(float(hits / count) if count else None)
        mean_conf.append(float(conf / count) if count else None)
    return ReliabilityBins(
        edges=[float(e) for e in edges],
        counts=[int(c) for c in counts],
        accuracy=accuracy,
        confidence=mean_conf,
    )
