"""Tests for vitkit.anomaly.threshold: thresholds, the [0, 1] score scale and labels."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from vitkit.anomaly.threshold import (
    ScoreScale,
    f1_optimal_threshold,
    is_anomalous,
    label_for,
    percentile_threshold,
)

# ----------------------------------------------------------------------------- percentile


@pytest.mark.parametrize(
    ("scores", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0, 5.0], 50.0, 3.0),
        # Position (5 - 1) * 0.9 = 3.6: 4 + 0.6 * (5 - 4).
        ([5.0, 1.0, 4.0, 2.0, 3.0], 90.0, 4.6),
        # Position 3 * 0.25 = 0.75: 10 + 0.75 * 10.
        ([40.0, 10.0, 30.0, 20.0], 25.0, 17.5),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 100.0, 5.0),
        ([7.0], 99.0, 7.0),
    ],
)
def test_percentile_threshold_interpolates_linearly(scores, q, expected) -> None:
    assert percentile_threshold(scores, q) == pytest.approx(expected, abs=1e-12)


def test_percentile_threshold_default_is_99th_and_accepts_tensors() -> None:
    scores = np.arange(101, dtype=np.float64)  # 0..100: the 99th percentile is 99
    assert percentile_threshold(scores) == pytest.approx(99.0)
    assert percentile_threshold(torch.arange(101.0)) == pytest.approx(99.0)
    assert isinstance(percentile_threshold(scores), float)


@pytest.mark.parametrize(
    ("scores", "q", "message"),
    [
        ([], 99.0, "empty"),
        ([1.0, float("nan")], 99.0, "NaN"),
        ([1.0, float("inf")], 99.0, "NaN or infinite"),
        ([1.0, 2.0], 0.0, r"\(0, 100\]"),
        ([1.0, 2.0], 100.5, r"\(0, 100\]"),
        ([[1.0, 2.0]], 99.0, "1-D"),
        (["a", "b"], 99.0, "real numbers"),
    ],
)
def test_percentile_threshold_rejects_bad_input(scores, q, message) -> None:
    with pytest.raises(ValueError, match=message):
        percentile_threshold(scores, q)


# ----------------------------------------------------------------------------- F1-optimal


def test_f1_optimal_threshold_picks_the_separating_gap() -> None:
    threshold, f1 = f1_optimal_threshold([0.1, 0.8, 0.2, 0.7, 0.3], [0, 1, 0, 1, 0])
    assert threshold == pytest.approx(0.5)  # halfway between 0.3 and 0.7
    assert f1 == 1.0


def test_f1_optimal_threshold_on_overlapping_classes_by_hand() -> None:
    # Flag the top k:   {6}: F1 2/4   {6,5}: 4/5   {6,5,4}: 4/6   {6..3}: 6/7   {6..2}: 6/8
    #                   all: 6/9.  Best: flag down to 3, threshold halfway between 2 and 3.
    threshold, f1 = f1_optimal_threshold([1, 2, 3, 4, 5, 6], [0, 0, 1, 0, 1, 1])
    assert threshold == pytest.approx(2.5)
    assert f1 == pytest.approx(6 / 7)


def test_f1_optimal_threshold_handles_tied_scores() -> None:
    # Groups {3}, {2, 2}, {1}: F1 2/3, 4/5, 4/6; the tied pair is flagged together.
    threshold, f1 = f1_optimal_threshold([1.0, 2.0, 2.0, 3.0], [0, 0, 1, 1])
    assert threshold == pytest.approx(1.5)
    assert f1 == pytest.approx(0.8)


def test_f1_optimal_threshold_breaks_ties_towards_the_lower_threshold() -> None:
    # Flag {4}: F1 2/3; {4,3}: 2/4; {4,3,2}: 2/5; all: 4/6 = 2/3 again -> the lowest wins,
    # which is the lowest score itself (everything flagged).
    threshold, f1 = f1_optimal_threshold([1.0, 2.0, 3.0, 4.0], [1, 0, 0, 1])
    assert threshold == 1.0
    assert f1 == pytest.approx(2 / 3)


def test_f1_optimal_threshold_matches_brute_force_with_sklearn() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.normal(labels * 1.2, 1.0), 1)  # rounding creates ties
    threshold, f1 = f1_optimal_threshold(scores, labels)
    brute = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert f1 == pytest.approx(brute, abs=1e-12)
    assert f1_score(labels, scores >= threshold) == pytest.approx(f1, abs=1e-12)
    assert threshold not in set(scores.tolist())  # sits in a gap (unless all are flagged)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1], [True, True, True]])
def test_f1_optimal_threshold_needs_both_classes(labels) -> None:
    with pytest.raises(ValueError, match="both normal and anomalous"):
        f1_optimal_threshold([1.0, 2.0, 3.0], labels)


def test_f1_optimal_threshold_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="0/1"):
        f1_optimal_threshold([1.0, 2.0], [0, 2])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        f1_optimal_threshold([1.0, 2.0], [0, 1, 1])


# ----------------------------------------------------------------------------- ScoreScale


def test_score_scale_from_normal_scores_by_hand() -> None:
    scale = ScoreScale.from_normal_scores([4.0, 1.0, 3.0, 2.0], threshold=5.0)
    assert (scale.low, scale.threshold, scale.high) == (1.0, 5.0, 9.0)
    raw = np.array([-10.0, 1.0, 3.0, 5.0, 7.0, 9.0, 100.0])
    np.testing.assert_allclose(scale.normalize(raw), [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_score_scale_is_exactly_half_at_the_threshold_and_monotone() -> None:
    rng = np.random.default_rng(0)
    normal = rng.gamma(2.0, 0.37, size=50)
    threshold = percentile_threshold(normal, 99.0)
    scale = ScoreScale.from_normal_scores(normal, threshold)
    assert scale.normalize(threshold) == 0.5  # exact, not approximately
    raw = np.sort(np.r_[rng.normal(threshold, 2.0, 500), -np.inf, np.inf])
    normalized = scale.normalize(raw)
    assert np.all(np.diff(normalized) >= 0)
    assert normalized.min() == 0.0 and normalized.max() == 1.0
    # The scale agrees with the decision convention everywhere.
    np.testing.assert_array_equal(normalized >= 0.5, is_anomalous(raw, threshold))


def test_score_scale_normalize_keeps_shape() -> None:
    scale = ScoreScale(low=0.0, threshold=1.0, high=3.0)
    out = scale.normalize([[0.5, 2.0], [1.0, 5.0]])
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out, [[0.25, 0.75], [0.5, 1.0]])
    assert scale.normalize(2.0).shape == ()


@pytest.mark.parametrize(
    ("normal", "threshold"),
    [([2.0, 2.0, 2.0], 2.0), ([0.0], 0.0), ([1e9, 1e9], 1e9), ([5.0, 6.0], 4.0)],
)
def test_score_scale_survives_degenerate_spreads(normal, threshold) -> None:
    scale = ScoreScale.from_normal_scores(normal, threshold)
    assert scale.low < scale.threshold < scale.high
    step = 0.01 * max(abs(threshold), 1.0)  # far beyond the tiny fallback spread
    with np.errstate(all="raise"):  # no division by zero, no overflow
        values = scale.normalize([threshold - step, threshold, threshold + step])
    assert values.tolist() == [0.0, 0.5, 1.0]


def test_score_scale_round_trips_through_json() -> None:
    scale = ScoreScale.from_normal_scores([0.1, 0.2, 0.3], threshold=0.35)
    again = ScoreScale.from_dict(json.loads(json.dumps(scale.to_dict())))
    assert again == scale
    assert set(scale.to_dict()) == {"low", "threshold", "high"}


@pytest.mark.parametrize(
    "values", [(1.0, 1.0, 2.0), (0.0, 2.0, 1.0), (0.0, float("nan"), 1.0), (0.0, 1.0, math.inf)]
)
def test_score_scale_rejects_invalid_values(values) -> None:
    with pytest.raises(ValueError, match="ScoreScale"):
        ScoreScale(*values)


def test_score_scale_errors() -> None:
    with pytest.raises(ValueError, match="missing"):
        ScoreScale.from_dict({"low": 0.0, "threshold": 1.0})
    with pytest.raises(ValueError, match="NaN"):
        ScoreScale(0.0, 1.0, 2.0).normalize([0.5, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        ScoreScale.from_normal_scores([], 1.0)


# ----------------------------------------------------------------------------- labels


def test_label_for_uses_score_at_or_above_threshold() -> None:
    assert label_for(5.0, 5.0) == "anomaly"
    assert label_for(5.0001, 5.0) == "anomaly"
    assert label_for(4.9999, 5.0) == "normal"
    assert label_for(np.float32(-1.0), 0.0) == "normal"
    with pytest.raises(ValueError, match="NaN"):
        label_for(float("nan"), 1.0)
    with pytest.raises(ValueError, match="finite"):
        label_for(1.0, float("inf"))


def test_is_anomalous_matches_label_for() -> None:
    scores = np.array([0.1, 0.5, 0.5000001, 0.9])
    flags = is_anomalous(scores, 0.5)
    assert flags.tolist() == [False, True, True, True]
    assert [label_for(s, 0.5) == "anomaly" for s in scores] == flags.tolist()


def test_with_few_normal_images_the_threshold_keeps_the_nominal_false_alarm_rate() -> None:
    from vitkit.anomaly.threshold import few_image_threshold

    rng = np.random.default_rng(0)
    fresh = rng.lognormal(mean=1.0, sigma=0.3, size=20_000)
    bounded, maxima = [], []
    for _ in range(300):  # five normal images set the threshold, new ones are scored
        five = rng.lognormal(mean=1.0, sigma=0.3, size=5)
        bounded.append(float((fresh > few_image_threshold(five, 99.0)).mean()))
        maxima.append(float((fresh > percentile_threshold(five, 99.0)).mean()))
    assert 0.005 < np.mean(bounded) < 0.02  # nominal 1%: exact for log-normal scores
    assert np.mean(maxima) > 0.1  # the 99th percentile of five is about their maximum: ~1/6
    many = rng.lognormal(size=40)
    assert few_image_threshold(many, 99.0) == percentile_threshold(many, 99.0)
