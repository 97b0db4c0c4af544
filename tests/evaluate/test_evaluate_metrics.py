"""Tests for vitkit.evaluate.metrics, checked against values worked out by hand."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from vitkit.evaluate import ClassificationMetrics, classification_metrics

LABELS = ["cat", "dog", "bird"]

# 3 classes, 8 samples. Columns: p(cat), p(dog), p(bird).
#  i  true  probs               pred  conf  correct  p(true)  rank of true
#  0  cat   [0.70, 0.20, 0.10]  cat   0.70  yes      0.70     1
#  1  cat   [0.50, 0.30, 0.20]  cat   0.50  yes      0.50     1
#  2  cat   [0.10, 0.65, 0.25]  dog   0.65  no       0.10     3
#  3  dog   [0.10, 0.85, 0.05]  dog   0.85  yes      0.85     1
#  4  dog   [0.20, 0.70, 0.10]  dog   0.70  yes      0.70     1
#  5  dog   [0.45, 0.35, 0.20]  cat   0.45  no       0.35     2
#  6  bird  [0.05, 0.05, 0.90]  bird  0.90  yes      0.90     1
#  7  bird  [0.10, 0.55, 0.35]  dog   0.55  no       0.35     2
Y_TRUE = np.array([0, 0, 0, 1, 1, 1, 2, 2])
PROBS = np.array(
    [
        [0.70, 0.20, 0.10],
        [0.50, 0.30, 0.20],
        [0.10, 0.65, 0.25],
        [0.10, 0.85, 0.05],
        [0.20, 0.70, 0.10],
        [0.45, 0.35, 0.20],
        [0.05, 0.05, 0.90],
        [0.10, 0.55, 0.35],
    ]
)


@pytest.fixture
def hand() -> ClassificationMetrics:
    return classification_metrics(Y_TRUE, PROBS, LABELS, top_k=(1, 2, 5), n_bins=5)


def test_confusion_matrix_by_hand(hand: ClassificationMetrics) -> None:
    #            pred: cat dog bird
    # true cat          2   1   0     (samples 0, 1 right; 2 -> dog)
    # true dog          1   2   0     (samples 3, 4 right; 5 -> cat)
    # true bird         0   1   1     (sample 6 right; 7 -> dog)
    assert hand.confusion_matrix == [[2, 1, 0], [1, 2, 0], [0, 1, 1]]
    assert hand.labels == LABELS
    assert hand.n == 8


def test_accuracy_and_per_class_by_hand(hand: ClassificationMetrics) -> None:
    # accuracy = trace / N = (2 + 2 + 1) / 8
    assert hand.accuracy == pytest.approx(5 / 8)
    # Column sums (times predicted): cat 3, dog 4, bird 1. Row sums (support): 3, 3, 2.
    # precision = tp / column sum, recall = tp / row sum, f1 = 2pr / (p + r):
    #   cat:  2/3, 2/3 -> f1 2/3
    #   dog:  2/4, 2/3 -> f1 2 * (1/2)(2/3) / (1/2 + 2/3) = (2/3) / (7/6) = 4/7
    #   bird: 1/1, 1/2 -> f1 2 * 1 * (1/2) / (3/2) = 2/3
    expected = {
        "cat": (2 / 3, 2 / 3, 2 / 3, 3),
        "dog": (1 / 2, 2 / 3, 4 / 7, 3),
        "bird": (1.0, 1 / 2, 2 / 3, 2),
    }
    assert list(hand.per_class) == LABELS
    for label, (p, r, f1, support) in expected.items():
        m = hand.per_class[label]
        assert m.precision == pytest.approx(p)
        assert m.recall == pytest.approx(r)
        assert m.f1 == pytest.approx(f1)
        assert m.support == support
    # balanced accuracy = mean recall = (2/3 + 2/3 + 1/2) / 3 = 11/18
    assert hand.balanced_accuracy == pytest.approx(11 / 18)


def test_ece_by_hand(hand: ClassificationMetrics) -> None:
    # 5 bins, right-closed: (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1].
    #   (.4,.6]: confs .50 yes, .45 no, .55 no -> acc 1/3, conf 1.50/3 = .5
    #            gap 1/6, weight 3/8 -> 1/16 = 0.0625
    #   (.6,.8]: confs .70 yes, .65 no, .70 yes -> acc 2/3, conf 2.05/3
    #            gap 0.05/3 = 1/60, weight 3/8 -> 1/160 = 0.00625
    #   (.8,1]:  confs .85 yes, .90 yes -> acc 1, conf .875
    #            gap .125, weight 2/8 -> 0.03125
    # ECE = 0.0625 + 0.00625 + 0.03125 = 0.1
    assert hand.ece == pytest.approx(0.1)


def test_top_k_and_nll_by_hand(hand: ClassificationMetrics) -> None:
    # top-1 = accuracy; the true class ranks <= 2 for all but sample 2 -> top-2 = 7/8.
    # k=5 > 3 classes is left out.
    assert hand.top_k == {1: pytest.approx(5 / 8), 2: pytest.approx(7 / 8)}
    p_true = [0.70, 0.50, 0.10, 0.85, 0.70, 0.35, 0.90, 0.35]
    assert hand.nll == pytest.approx(-sum(math.log(p) for p in p_true) / 8)


def test_top_k_always_has_one_and_keeps_k_equal_to_n_classes() -> None:
    m = classification_metrics(Y_TRUE, PROBS, LABELS)  # default (1, 5); 5 > 3 classes
    assert list(m.top_k) == [1]
    m = classification_metrics(Y_TRUE, PROBS, LABELS, top_k=(3,))
    assert m.top_k == {1: pytest.approx(5 / 8), 3: 1.0}


def test_top_k_ties_break_like_argmax() -> None:
    # All-equal rows: arg-max picks class 0, so top-1 must count class 0 as correct only.
    probs = np.full((3, 3), 1 / 3)
    m = classification_metrics(np.array([0, 1, 2]), probs, LABELS, top_k=(2,))
    assert m.accuracy == pytest.approx(1 / 3)
    assert m.top_k == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}


def test_class_never_predicted_has_zero_precision_without_warnings() -> None:
    # bird (class 2) has support 1 but is never predicted.
    #            pred: cat dog bird
    # true cat          1   0   0
    # true dog          0   1   0
    # true bird         0   1   0
    y = np.array([0, 1, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, probs, LABELS)
    assert m.confusion_matrix == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    bird = m.per_class["bird"]
    assert (bird.precision, bird.recall, bird.f1, bird.support) == (0.0, 0.0, 0.0, 1)
    # dog: precision 1/2, recall 1 -> f1 2/3
    assert m.per_class["dog"].precision == pytest.approx(0.5)
    assert m.per_class["dog"].f1 == pytest.approx(2 / 3)
    # balanced accuracy = (1 + 1 + 0) / 3
    assert m.balanced_accuracy == pytest.approx(2 / 3)
    assert not any(math.isnan(v) for v in json_floats(m.to_dict()))


def test_class_without_support_is_left_out_of_balanced_accuracy() -> None:
    # No sample is a bird, but one cat is predicted as bird.
    #            pred: cat dog bird
    # true cat          1   0   1
    # true dog          0   2   0
    # true bird         0   0   0
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.1, 0.7], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, probs, LABELS)
    assert m.confusion_matrix == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    bird = m.per_class["bird"]
    assert (bird.precision, bird.recall, bird.f1, bird.support) == (0.0, 0.0, 0.0, 0)
    # balanced accuracy over cat and dog only: (1/2 + 1) / 2 = 3/4 (not (1/2 + 1 + 0) / 3)
    assert m.balanced_accuracy == pytest.approx(3 / 4)
    assert m.accuracy == pytest.approx(3 / 4)


def test_agrees_with_sklearn_on_random_data() -> None:
    rng = np.random.default_rng(0)
    n, c = 500, 7
    logits = rng.normal(size=(n, c)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    # Make predictions informative so the metrics are not all near chance.
    y = np.where(rng.random(n) < 0.6, probs.argmax(axis=1), rng.integers(0, c, n))
    labels = [f"class_{i}" for i in range(c)]
    m = classification_metrics(y, probs, labels, top_k=(1, 3, 5))

    pred = probs.argmax(axis=1)
    all_labels = list(range(c))
    assert m.accuracy == pytest.approx(accuracy_score(y, pred))
    assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, pred))
    assert m.confusion_matrix == confusion_matrix(y, pred, labels=all_labels).tolist()
    p, r, f1, support = precision_recall_fscore_support(y, pred, labels=all_labels, zero_division=0)
    for i, label in enumerate(labels):
        assert m.per_class[label].precision == pytest.approx(p[i])
        assert m.per_class[label].recall == pytest.approx(r[i])
        assert m.per_class[label].f1 == pytest.approx(f1[i])
        assert m.per_class[label].support == support[i]
    for k in (1, 3, 5):
        expected = top_k_accuracy_score(y, probs, k=k, labels=all_labels)
        assert m.top_k[k] == pytest.approx(expected)
    assert m.nll == pytest.approx(log_loss(y, probs, labels=all_labels))


def test_to_dict_is_json_ready_and_round_trips(hand: ClassificationMetrics) -> None:
    d = hand.to_dict()
    assert set(d) == {
        "accuracy",
        "balanced_accuracy",
        "per_class",
        "confusion_matrix",
        "ece",
        "top_k",
        "nll",
        "n",
        "labels",
    }
    assert d["top_k"].keys() == {"1", "2"}
    assert d["per_class"]["dog"] == {
        "precision": 0.5,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(4 / 7),
        "support": 3,
    }
    text = json.dumps(d)
    assert ClassificationMetrics.from_dict(json.loads(text)) == hand


def test_accepts_float32_and_torch_like_int_dtypes() -> None:
    m = classification_metrics(Y_TRUE.astype(np.int32), PROBS.astype(np.float32), LABELS)
    assert m.accuracy == pytest.approx(5 / 8)


@pytest.mark.parametrize(
    ("y", "probs", "labels", "message"),
    [
        (
            np.zeros(10, int),
            np.full((10, 2), 0.5),
            LABELS,
            r"probs must have shape \(N, C\) with C=len\(labels\)=3, got \(10, 2\)",
        ),
        (
            np.zeros(10, int),
            np.full(10, 1 / 3),
            LABELS,
            r"probs must have shape \(N, C\) with C=len\(labels\)=3, got \(10,\)",
        ),
        (
            np.zeros(9, int),
            np.full((10, 3), 1 / 3),
            LABELS,
            r"y_true must have shape \(N,\) with N=len\(probs\)=10, got \(9,\)",
        ),
        (np.zeros((10, 1), int), np.full((10, 3), 1 / 3), LABELS, r"y_true must have shape \(N,\)"),
        (np.zeros(10), np.full((10, 3), 1 / 3), LABELS, r"integer class indices"),
        (np.full(10, 3), np.full((10, 3), 1 / 3), LABELS, r"class indices in \[0, 2\]"),
        (np.full(10, -1), np.full((10, 3), 1 / 3), LABELS, r"class indices in \[0, 2\]"),
        (np.zeros(0, int), np.zeros((0, 3)), LABELS, r"probs is empty"),
        (np.zeros(2, int), np.array([[2.0, -1.0, 0.0]] * 2), LABELS, r"non-negative.*logits"),
        (np.zeros(2, int), np.array([[0.5, 0.5, 0.5]] * 2), LABELS, r"sum to 1.*logits"),
        (np.zeros(2, int), np.array([[np.nan, 0.5, 0.5]] * 2), LABELS, r"NaN"),
        (np.zeros(2, int), np.full((2, 3), 1 / 3), ["a", "b", "a"], r"unique.*\['a'\]"),
        (np.zeros(2, int), np.zeros((2, 0)), [], r"labels is empty"),
    ],
)
def test_rejects_bad_inputs(
    y: np.ndarray, probs: np.ndarray, labels: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(y, probs, labels)


@pytest.mark.parametrize("top_k", [(0,), (-1,), (1.5,), (True,)])
def test_rejects_bad_top_k(top_k: tuple) -> None:
    with pytest.raises(ValueError, match="top_k values must be positive integers"):
        classification_metrics(Y_TRUE, PROBS, LABELS, top_k=top_k)


@pytest.mark.parametrize("n_bins", [0, -3, 2.5])
def test_rejects_bad_n_bins(n_bins: object) -> None:
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        classification_metrics(Y_TRUE, PROBS, LABELS, n_bins=n_bins)  # type: ignore[arg-type]


def json_floats(obj: object) -> list[float]:
    """All floats nested anywhere in a JSON-like object."""
    if isinstance(obj, float):
        return [obj]
    if isinstance(obj, dict):
        return [f for v in obj.values() for f in json_floats(v)]
    if isinstance(obj, list):
        return [f for v in obj for f in json_floats(v)]
    return []
