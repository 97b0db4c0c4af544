"""Confidence calibration: expected calibration error, reliability-diagram bins and
temperature scaling.

Confidence is the top predicted probability; a prediction is correct when its arg-max
(lowest index on ties) equals the true class. Bins are equal-width on ``[0, 1]`` and
right-closed, ``(lo, hi]``, with the first bin also holding a confidence of exactly 0.
"""

from __future__ import annotations

import math
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


# Temperature search range: beyond it the data carries no usable information (see
# TemperatureFit.at_bound).
TEMPERATURE_BOUNDS = (0.05, 20.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, y_true: np.ndarray,
                            temperature: float = 1.0) -> float:
    """Mean ``-log softmax(logits / T)[y]`` (natural log), computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(z)), np.asarray(y_true)]))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
                    tolerance: float = 1e-7) -> float:
    """The temperature ``T`` that minimises the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    The NLL is convex in ``1/T``, hence unimodal in ``log T``: scipy's bounded Brent search
    (``scipy.optimize.minimize_scalar``) over ``log T`` within ``bounds`` finds the minimum to
    a relative ``tolerance``; the bounds themselves are compared too, where a minimum at the
    edge of the range lies. ``T > 1`` softens an over-confident model, ``T < 1`` sharpens an
    under-confident one; the arg-max never moves.

    Args:
        logits: ``(N, C)`` raw logits.
        y_true: ``(N,)`` integer true class indices.
        bounds: Smallest and largest temperature searched.
        tolerance: The absolute tolerance on ``log T`` (scipy's ``xatol``).

    Raises:
        ValueError: If the inputs have inconsistent shapes or invalid values.
    """
    z, y = _check_logits(logits, y_true)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])

    def loss(log_t: float) -> float:
        return negative_log_likelihood(z, y, math.exp(log_t))

    from scipy import optimize

    found = optimize.minimize_scalar(loss, bounds=(lo, hi), method="bounded",
                                     options={"xatol": tolerance})
    best = min((loss(lo), lo), (float(found.fun), float(found.x)), (loss(hi), hi))[1]
    return float(math.exp(best))


@dataclass
class TemperatureFit:
    """A fitted temperature and what it changed on the images it was fitted on.

    Attributes:
        temperature: Divides the logits before the softmax.
        ece_before: ECE of ``softmax(logits)``.
        ece_after: ECE of ``softmax(logits / temperature)``.
        nll_before: Mean NLL before.
        nll_after: Mean NLL after.
        n: Number of images.
        accuracy: Top-1 accuracy (the same before and after).
        before: Reliability bins before.
        after: Reliability bins after.
    """

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n: int
    accuracy: float
    before: ReliabilityBins
    after: ReliabilityBins

    @property
    def at_bound(self) -> bool:
        """The optimum sits on the edge of the search range, so the data cannot pin ``T`` down:
        every prediction is right (the NLL keeps falling as ``T -> 0``), or the logits are
        nearly flat (``T`` far below 1) or carry no information (``T`` far above 1)."""
        lo, hi = TEMPERATURE_BOUNDS
        return not lo * 1.001 < self.temperature < hi / 1.001

    def record(self, fitted_on: str) -> dict:
        """What a bundle stores under ``calibration`` in ``vitkit.json``."""
        return {
            "temperature": self.temperature,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "nll_before": self.nll_before,
            "nll_after": self.nll_after,
            "fitted_on": fitted_on,
            "n": self.n,
        }


def temperature_scaling(logits: np.ndarray, y_true: np.ndarray,
                        n_bins: int = 15) -> TemperatureFit:
    """Fits a temperature on ``logits`` and measures ECE and NLL before and after.

    Raises:
        ValueError: If the inputs have inconsistent shapes or invalid values.
    """
    z, y = _check_logits(logits, y_true)
    n_bins = check_n_bins(n_bins)
    temperature = fit_temperature(z, y)
    before = _bins(softmax(z), y, n_bins)
    after = _bins(softmax(z, temperature), y, n_bins)
    return TemperatureFit(
        temperature=temperature,
        ece_before=before.ece,
        ece_after=after.ece,
        nll_before=negative_log_likelihood(z, y),
        nll_after=negative_log_likelihood(z, y, temperature),
        n=int(len(y)),
        accuracy=float(np.mean(z.argmax(axis=1) == y)),
        before=before,
        after=after,
    )


def _check_logits(logits: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, C) with N >= 1 and C >= 2, got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite")
    return z, check_targets(y_true, z.shape[0], z.shape[1])
