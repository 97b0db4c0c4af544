"""Turning raw anomaly scores into decisions: thresholds, a [0, 1] scale and labels (numpy).

Convention used across ``vitkit.anomaly``: an image (or pixel) is an **anomaly iff
``score >= threshold``**. This is scikit-learn's convention for ROC and precision-recall
curves, so a threshold read off those curves means the same thing here. Thresholds that this
module chooses from data sit halfway between two distinct scores, so no observed score lies
exactly on them and the convention only matters for scores that land there later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

# Smallest spread (relative to the scores' magnitude) a ScoreScale may have on either side of
# the threshold; keeps normalize() from dividing by zero when every normal score is the same.
_MIN_RELATIVE_SPREAD = 1e-6


def as_score_array(values: ArrayLike, name: str = "scores") -> np.ndarray:
    """Return ``values`` as a 1-D float64 array of finite numbers.

    Args:
        values: Array-like of shape ``(N,)`` (a CPU/GPU tensor is accepted too).
        name: Name used in error messages.

    Raises:
        ValueError: If the input is empty, not 1-D, not numeric, or holds NaN/inf.
    """
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU
        values = values.detach().cpu().numpy()  # type: ignore[union-attr]
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape (N,), got shape {arr.shape}; "
                         "flatten it or pass one score per image")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: need at least one score")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values at positions "
                         f"{np.flatnonzero(~np.isfinite(arr))[:5].tolist()}")
    return arr


def as_label_array(labels: ArrayLike, n: int, name: str = "labels") -> np.ndarray:
    """Return binary labels (``True`` = anomaly) as a 1-D bool array of length ``n``.

    Args:
        labels: Array-like of shape ``(n,)`` holding bools or the integers 0/1.
        n: Expected length (the number of scores).
        name: Name used in error messages.

    Raises:
        ValueError: If the shape is wrong or a value is not 0/1.
    """
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()  # type: ignore[union-attr]
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like the scores, got {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be bools or 0/1 (1 = anomaly), got values "
                         f"{np.unique(arr)[:5].tolist()}")
    return arr.astype(bool)


def check_threshold(threshold: float) -> float:
    """Return ``threshold`` as a finite float, or raise ``ValueError``."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number, got {threshold!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"threshold must be finite, got {value}")
    return value


def is_anomalous(scores: ArrayLike, threshold: float) -> np.ndarray:
    """Decisions for many scores: ``scores >= threshold`` (the module's convention).

    Args:
        scores: Array-like of any shape.
        threshold: Decision threshold on the raw score.

    Returns:
        Bool array of the same shape, ``True`` = anomaly.
    """
    return np.asarray(scores, dtype=np.float64) >= check_threshold(threshold)


def label_for(score: float, threshold: float) -> Literal["normal", "anomaly"]:
    """Return ``"anomaly"`` if ``score >= threshold``, else ``"normal"``.

    Raises:
        ValueError: If ``score`` is NaN (it cannot be compared) or the threshold is not finite.
    """
    value = float(score)
    if math.isnan(value):
        raise ValueError("score is NaN: the detector produced no usable score for this image")
    return "anomaly" if value >= check_threshold(threshold) else "normal"


def percentile_threshold(normal_scores: ArrayLike, q: float = 99.0) -> float:
    """Default threshold: the ``q``-th percentile of held-out normal scores.

    Linear interpolation between order statistics (numpy's default), so with ``q = 100`` the
    threshold is the largest normal score, which the ``>=`` convention flags as an anomaly;
    any ``q < 100`` lets about ``(100 - q)`` % of normal images through as false alarms.

    Args:
        normal_scores: ``(N,)`` raw scores of normal images the detector never learned from.
        q: Percentile in ``(0, 100]``.

    Returns:
        The threshold.

    Raises:
        ValueError: If the scores are empty or non-finite, or ``q`` is outside ``(0, 100]``.
    """
    scores = as_score_array(normal_scores, "normal_scores")
    q = float(q)
    if not 0.0 < q <= 100.0:
        raise ValueError(f"q must be a percentile in (0, 100], got {q}; 99 is the usual choice")
    return float(np.percentile(scores, q, method="linear"))


FEW_IMAGES = 30
"""Below this many normal images, a 99th percentile of their scores is about their maximum:
:func:`few_image_threshold` extrapolates the tail instead."""
MIN_BOUND_DOF = 3
"""Fewer scores than this plus one give no usable spread (Student's t at 1 degree of freedom
is 31.8: a bound above every defect, measured on the paper sets: F1 0)."""


def few_image_threshold(normal_scores: ArrayLike, q: float = 99.0,
                        n_images: int | None = None) -> float:
    """The ``q``-th percentile of the normal scores, raised, when fewer than
    :data:`FEW_IMAGES` images gave them, to the one-sided ``q`` % prediction bound of a
    log-normal fitted to them: ``exp(m + t * s * sqrt(1 + 1/n))`` with ``m, s`` the mean and
    spread of the log scores and ``t`` Student's quantile with one degree of freedom per score
    less one (below :data:`MIN_BOUND_DOF`, the percentile alone).

    With two to a few dozen normal images the empirical percentile is their maximum, which new
    normal images pass about ``1 / (n + 1)`` of the time whatever ``q`` says; the bound widens
    as ``n`` shrinks. ``n_images`` counts independent images (augmented copies of one image
    are not) and sets ``1/n``; the degrees of freedom come from every score.
    """
    from scipy import stats

    scores = as_score_array(normal_scores, "normal_scores")
    empirical = percentile_threshold(scores, q)
    n = len(scores) if n_images is None else int(n_images)
    if n >= FEW_IMAGES or len(scores) < 2 or float(scores.min()) <= 0.0:
        return empirical
    logs = np.log(scores)
    spread = float(logs.std(ddof=1))
    # Degrees of freedom from every score (augmented copies included): with one or two
    # images and no copies, n - 1 would put t at 31.8 and the bound beyond every defect.
    dof = len(scores) - 1
    if dof < MIN_BOUND_DOF:  # too few scores to say how they spread: the largest one
        return empirical
    t = float(stats.t.ppf(q / 100.0, dof)) if q < 100.0 else float("inf")
    bound = float(np.exp(logs.mean() + t * spread * np.sqrt(1.0 + 1.0 / max(n, 1))))
    return max(empirical, bound) if np.isfinite(bound) else empirical


def f1_optimal_threshold(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """The threshold with the best F1 on labelled scores.

    Candidates are the lowest score (every image flagged) and the midpoints between adjacent
    distinct scores, so the threshold generalises instead of sitting on a training score.
    Ties in F1 go to the lowest threshold: in inspection a missed defect usually costs more
    than a false alarm.

    Args:
        scores: ``(N,)`` raw scores.
        labels: ``(N,)`` bools or 0/1, ``True``/1 = anomaly.

    Returns:
        ``(threshold, f1)``, where ``f1`` is the F1 of ``score >= threshold`` on these data.

    Raises:
        ValueError: If shapes disagree, values are invalid, or only one class is present.
    """
    s = as_score_array(scores)
    y = as_label_array(labels, s.size)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError("f1_optimal_threshold needs both normal and anomalous images, got "
                         f"{y.size - n_pos} normal and {n_pos} anomalous")
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    # Index of the last element of each group of equal scores (descending order): a threshold
    # just below that group flags everything up to it.
    group_end = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])
    tp = np.cumsum(y_desc)[group_end]
    fp = group_end + 1 - tp
    f1 = 2.0 * tp / (tp + fp + n_pos)
    # Candidate k flags groups 0..k: halfway to the next lower score, or the lowest score.
    midpoints = (s_desc[group_end[:-1]] + s_desc[group_end[:-1] + 1]) / 2.0
    candidates = np.r_[midpoints, s_desc[-1]]
    best = int(np.flatnonzero(f1 == f1.max())[-1])  # last = lowest threshold among ties
    return float(candidates[best]), float(f1[best])


@dataclass(frozen=True)
class ScoreScale:
    """Piecewise-linear map from raw scores to ``[0, 1]`` with the threshold at exactly 0.5.

    ``low -> 0``, ``threshold -> 0.5``, ``high -> 1``, linear in between and clipped outside,
    so ``normalize(score) >= 0.5`` iff ``score >= threshold``.

    Attributes:
        low: Raw score mapped to 0 (typically the lowest normal score).
        threshold: Raw decision threshold, mapped to 0.5.
        high: Raw score mapped to 1.
    """

    low: float
    threshold: float
    high: float

    def __post_init__(self) -> None:
        values = (self.low, self.threshold, self.high)
        if not all(math.isfinite(float(v)) for v in values):
            raise ValueError(f"ScoreScale needs finite values, got low/threshold/high={values}")
        if not self.low < self.threshold < self.high:
            raise ValueError(f"ScoreScale needs low < threshold < high, got {values}; "
                             "build it with ScoreScale.from_normal_scores")

    def normalize(self, scores: ArrayLike) -> np.ndarray:
        """Map raw scores to ``[0, 1]``, monotone non-decreasing.

        Args:
            scores: Array-like of any shape; ``±inf`` map to 1 and 0.

        Returns:
            float64 array of the same shape (0-d for a scalar).

        Raises:
            ValueError: If a score is NaN.
        """
        s = np.asarray(scores, dtype=np.float64)
        if np.isnan(s).any():
            raise ValueError("scores contains NaN; cannot place it on the scale")
        below = 0.5 * (s - self.low) / (self.threshold - self.low)
        above = 0.5 + 0.5 * (s - self.threshold) / (self.high - self.threshold)
        return np.clip(np.where(s <= self.threshold, below, above), 0.0, 1.0)

    @classmethod
    def from_normal_scores(cls, normal_scores: ArrayLike, threshold: float) -> ScoreScale:
        """Scale from held-out normal scores: ``low = min``, ``high = 2 * threshold - low``.

        When the threshold is not above the lowest normal score (all scores equal, or a
        threshold chosen elsewhere), ``low`` is moved to ``threshold - spread`` with a tiny
        ``spread`` relative to the scores' magnitude, so nothing divides by zero.

        Args:
            normal_scores: ``(N,)`` raw scores of normal images.
            threshold: The decision threshold.

        Raises:
            ValueError: If the scores are empty or non-finite or the threshold is not finite.
        """
        scores = as_score_array(normal_scores, "normal_scores")
        t = check_threshold(threshold)
        low = float(scores.min())
        min_spread = _MIN_RELATIVE_SPREAD * max(abs(t), abs(low), 1.0)
        if t - low < min_spread:
            low = t - min_spread
        return cls(low=low, threshold=t, high=t + (t - low))

    def to_dict(self) -> dict[str, float]:
        """Return ``{"low", "threshold", "high"}`` for JSON."""
        return {"low": self.low, "threshold": self.threshold, "high": self.high}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreScale:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ValueError: If a key is missing or the values are not a valid scale.
        """
        missing = [key for key in ("low", "threshold", "high") if key not in data]
        if missing:
            raise ValueError(f"score scale is missing {missing}; expected keys "
                             "low, threshold, high")
        return cls(low=float(data["low"]), threshold=float(data["threshold"]),
                   high=float(data["high"]))
