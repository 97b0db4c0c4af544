"""Tests for vitkit.evaluate.calibration."""

from __future__ import annotations

import numpy as np
import pytest

from vitkit.evaluate import expected_calibration_error, reliability_bins

# Two classes, 5 bins of width 0.2, right-closed.
#  true  probs         conf  correct  bin
#  0     [0.90, 0.10]  0.90  yes      (.8, 1]
#  0     [0.30, 0.70]  0.70  no       (.6, .8]
#  1     [0.25, 0.75]  0.75  yes      (.6, .8]
#  1     [0.55, 0.45]  0.55  no       (.4, .6]
PROBS = np.array([[0.90, 0.10], [0.30, 0.70], [0.25, 0.75], [0.55, 0.45]])
Y = np.array([0, 0, 1, 1])


def test_reliability_bins_by_hand() -> None:
    bins = reliability_bins(PROBS, Y, n_bins=5)
    assert bins.edges == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert bins.counts == [0, 0, 1, 2, 1]
    assert bins.accuracy == [None, None, 0.0, 0.5, 1.0]
    assert bins.confidence[:2] == [None, None]
    assert bins.confidence[2:] == pytest.approx([0.55, 0.725, 0.90])
    assert bins.n == 4


def test_ece_by_hand() -> None:
    # (.4,.6]: |0 - .55| * 1/4 = .1375
    # (.6,.8]: |.5 - .725| * 2/4 = .1125
    # (.8,1]:  |1 - .9| * 1/4 = .025
    # ECE = .275
    assert expected_calibration_error(PROBS, Y, n_bins=5) == pytest.approx(0.275)


def test_confidence_on_an_edge_goes_to_the_lower_bin_and_one_to_the_last() -> None:
    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    bins = reliability_bins(probs, np.array([0, 0, 1]), n_bins=2)
    assert bins.counts == [1, 2]


def test_perfect_confident_predictions_have_zero_ece() -> None:
    probs = np.eye(4)
    assert expected_calibration_error(probs, np.arange(4)) == 0.0


def test_ece_matches_a_direct_loop_on_random_data() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 5)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, 5, 300)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    n_bins = 15
    edges = np.linspace(0, 1, n_bins + 1)
    expected = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            gap = abs((pred[in_bin] == y[in_bin]).mean() - conf[in_bin].mean())
            expected += in_bin.mean() * gap
    assert expected_calibration_error(probs, y, n_bins) == pytest.approx(expected)
    bins = reliability_bins(probs, y, n_bins)
    assert sum(bins.counts) == 300
    assert bins.ece == pytest.approx(expected)


def test_to_dict_is_json_ready() -> None:
    d = reliability_bins(PROBS, Y, n_bins=5).to_dict()
    assert d["counts"] == [0, 0, 1, 2, 1]
    assert d["accuracy"][0] is None


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"probs must have shape \(N, C\), got \(4,\)"):
        expected_calibration_error(np.ones(4), Y)
    with pytest.raises(ValueError, match=r"y_true must have shape \(N,\) with N=len\(probs\)=4"):
        expected_calibration_error(PROBS, Y[:3])
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        reliability_bins(PROBS, Y, n_bins=0)
