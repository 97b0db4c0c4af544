"""How well OOD scores separate in-distribution images from others (numpy; higher = more OOD).

Conventions follow OpenOOD: in-distribution images are the positives, ``FPR95`` is the share
of out-of-distribution images accepted at the threshold that accepts 95% of the
in-distribution ones, and an image is accepted iff ``score <= threshold``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score, roc_curve


def accept_threshold(scores: ArrayLike, accept: float = 0.95) -> float:
    """The smallest observed score that accepts at least ``accept`` of ``scores``
    (``score <= threshold``), so the accept rate on these images is never below ``accept``."""
    values = np.sort(np.asarray(scores, dtype=np.float64))
    if values.size == 0:
        raise ValueError("no scores to set a threshold on")
    if not 0.0 < accept <= 1.0:
        raise ValueError(f"accept must be in (0, 1], got {accept}")
    return float(values[int(np.ceil(accept * values.size)) - 1])


def accept_rate(scores: ArrayLike, threshold: float) -> float:
    values = np.asarray(scores, dtype=np.float64)
    return float(np.mean(values <= threshold)) if values.size else float("nan")


def auroc(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    """Probability that an OOD image scores higher than an in-distribution one (ties: 1/2)."""
    inside, outside = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    labels = np.r_[np.zeros(inside.size), np.ones(outside.size)]
    return float(roc_auc_score(labels, np.r_[inside, outside]))


def fpr_at_tpr(in_scores: ArrayLike, out_scores: ArrayLike, tpr: float = 0.95) -> float:
    """Share of OOD images accepted by the lowest threshold that accepts ``tpr`` of the
    in-distribution images (read off the exact ROC curve, in-distribution as positives)."""
    inside, outside = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    labels = np.r_[np.ones(inside.size), np.zeros(outside.size)]
    fpr, tprs, _ = roc_curve(labels, -np.r_[inside, outside], drop_intermediate=False)
    return float(fpr[np.searchsorted(tprs, tpr - 1e-12, side="left")])
