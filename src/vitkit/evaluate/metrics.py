"""Classification metrics from predicted probabilities (pure numpy).

The predicted class is the arg-max of each probability row; ties go to the lowest class
index, and top-k ranks break ties the same way, so top-1 accuracy always equals accuracy.
Undefined ratios (precision of a class never predicted, recall of a class with no samples)
are reported as 0.0 rather than NaN, and raise no warnings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitkit.evaluate._validate import check_n_bins, check_probs, check_targets
from vitkit.evaluate.calibration import _bins

# Floor for the true-class probability in the NLL so a confident miss costs a large but
# finite amount (same floor as scikit-learn's log_loss for float64).
_NLL_EPS = float(np.finfo(np.float64).eps)


@dataclass
class ClassMetrics:
    """One-vs-rest metrics of a single class.

    Attributes:
        precision: Correct predictions of the class / all predictions of the class.
        recall: Correct predictions of the class / samples of the class.
        f1: Harmonic mean of precision and recall.
        support: Number of samples whose true class is this class.
    """

    precision: float
    recall: float
    f1: float
    support: int

    def to_dict(self) -> dict:
        """Return a JSON-friendly dict."""
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
        }


@dataclass
class ClassificationMetrics:
    """Metrics of a classifier on one split.

    Attributes:
        accuracy: Fraction of samples whose arg-max prediction is the true class.
        balanced_accuracy: Mean recall over the classes that have at least one sample.
        per_class: Label -> per-class metrics, in ``labels`` order.
        confusion_matrix: ``C x C`` counts; rows are true classes, columns predicted ones,
            both in ``labels`` order.
        ece: Expected calibration error of the top-class confidence.
        top_k: ``k`` -> top-k accuracy, for ``k = 1`` and each requested ``k <= C``.
        nll: Mean negative log-likelihood of the true class (natural log).
        n: Number of samples.
        labels: Class names; index ``i`` is class ``i``.
    """

    accuracy: float
    balanced_accuracy: float
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]
    ece: float
    top_k: dict[int, float]
    nll: float
    n: int
    labels: list[str]

    def to_dict(self) -> dict:
        """Return a JSON-friendly dict; ``top_k`` keys become strings (``"1"``, ``"5"``)."""
        return {
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "per_class": {label: m.to_dict() for label, m in self.per_class.items()},
            "confusion_matrix": [list(row) for row in self.confusion_matrix],
            "ece": self.ece,
            "top_k": {str(k): v for k, v in self.top_k.items()},
            "nll": self.nll,
            "n": self.n,
            "labels": list(self.labels),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ClassificationMetrics:
        """Rebuild metrics from :meth:`to_dict` output (extra keys are ignored).

        Raises:
            KeyError: If a required key is missing.
            ValueError: If a value has the wrong type.
        """
        return cls(
            accuracy=float(data["accuracy"]),
            balanced_accuracy=float(data["balanced_accuracy"]),
            per_class={
                str(label): ClassMetrics(
                    precision=float(m["precision"]),
                    recall=float(m["recall"]),
                    f1=float(m["f1"]),
                    support=int(m["support"]),
                )
                for label, m in data["per_class"].items()
            },
            confusion_matrix=[[int(v) for v in row] for row in data["confusion_matrix"]],
            ece=float(data["ece"]),
            top_k={int(k): float(v) for k, v in data["top_k"].items()},
            nll=float(data["nll"]),
            n=int(data["n"]),
            labels=[str(label) for label in data["labels"]],
        )


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    top_k: Sequence[int] = (1, 5),
    n_bins: int = 15,
) -> ClassificationMetrics:
    """Compute accuracy, per-class metrics, confusion matrix, calibration and NLL.

    Args:
        y_true: ``(N,)`` integer true class indices in ``[0, C)``.
        probs: ``(N, C)`` predicted class probabilities, ``C = len(labels)``; rows sum to 1.
        labels: Class names; index ``i`` names class ``i``. Must be unique.
        top_k: Values of ``k`` for top-k accuracy. ``k = 1`` is always included; values
            larger than ``C`` are left out (they would trivially be 1.0).
        n_bins: Number of equal-width confidence bins for the ECE.

    Returns:
        The metrics.

    Raises:
        ValueError: If shapes disagree, ``labels`` has duplicates, ``probs`` is not a
            probability matrix, a class index is out of range, or a ``k`` is below 1.
    """
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("labels is empty: need at least one class name")
    if len(set(labels)) != len(labels):
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        raise ValueError(f"labels must be unique, got duplicates {duplicates}")
    n_classes = len(labels)
    p = check_probs(probs, n_classes)
    y = check_targets(y_true, p.shape[0], n_classes)
    n_bins = check_n_bins(n_bins)
    ks = _check_top_k(top_k, n_classes)

    n = p.shape[0]
    pred = p.argmax(axis=1)
    cm = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes)
    cm = cm.reshape(n_classes, n_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    has_support = support > 0
    balanced = float(recall[has_support].mean()) if has_support.any() else 0.0

    # Rank of the true class when classes are sorted by descending probability; a stable
    # sort keeps the lower index first on ties, matching arg-max.
    order = np.argsort(-p, axis=1, kind="stable")
    rank = np.argmax(order == y[:, None], axis=1)
    top = {k: float(np.mean(rank < k)) for k in ks}

    p_true = p[np.arange(n), y]
    nll = float(-np.mean(np.log(np.clip(p_true, _NLL_EPS, 1.0))))

    per_class = {
        label: ClassMetrics(
            precision=float(precision[i]),
            recall=float(recall[i]),
            f1=float(f1[i]),
            support=int(support[i]),
        )
        for i, label in enumerate(labels)
    }
    return ClassificationMetrics(
        accuracy=float(tp.sum() / n),
        balanced_accuracy=balanced,
        per_class=per_class,
        confusion_matrix=cm.tolist(),
        ece=_bins(p, y, n_bins).ece,
        top_k=top,
        nll=nll,
        n=int(n),
        labels=labels,
    )


def _check_top_k(top_k: Sequence[int], n_classes: int) -> list[int]:
    """Return the sorted, de-duplicated ``k`` values to report (1 plus those ``<= C``)."""
    ks = {1}
    for k in top_k:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"top_k values must be positive integers, got {k!r}")
        if k <= n_classes:
            ks.add(int(k))
    return sorted(ks)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise ``num / den`` with 0.0 where ``den`` is 0 (no warnings)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out
