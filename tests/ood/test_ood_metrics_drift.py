"""OOD metrics and the drift tests, on numbers where the answer is known."""

from __future__ import annotations

import pytest
import torch
from scipy import stats as scipy_stats

from vitkit.ood.drift import (
    class_mix_test,
    mmd_permutation_test,
    ood_share_p_value,
    verdict,
)
from vitkit.ood.metrics import accept_rate, accept_threshold, auroc, fpr_at_tpr


def test_auroc_and_fpr95_by_hand() -> None:
    inside = [0.0, 1.0, 2.0, 3.0]
    assert auroc(inside, [4.0, 5.0]) == 1.0
    assert auroc(inside, [-1.0, -2.0]) == 0.0
    # Out scores 1.5 and 10: 1.5 beats 2 of 4 in-scores, 10 beats all -> (2 + 4) / 8
    assert auroc(inside, [1.5, 10.0]) == pytest.approx(0.75)
    # 95% of 20 in-scores 0..19 accepted needs threshold 18: out 17.5 accepted, 30 refused
    twenty = [float(i) for i in range(20)]
    assert fpr_at_tpr(twenty, [17.5, 30.0]) == pytest.approx(0.5)
    assert fpr_at_tpr(twenty, [18.5, 30.0]) == pytest.approx(0.0)


def test_accept_threshold_accepts_at_least_the_share_asked() -> None:
    values = list(range(100))
    threshold = accept_threshold(values, 0.95)
    assert threshold == 94.0 and accept_rate(values, threshold) == 0.95
    assert accept_threshold([3.0, 1.0, 2.0], 0.95) == 3.0  # small samples: the largest
    with pytest.raises(ValueError):
        accept_threshold([], 0.95)


def test_same_distribution_is_not_drift_and_a_shift_is() -> None:
    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(300, 40, generator=gen)
    same = torch.randn(120, 40, generator=gen)
    shifted = torch.randn(120, 40, generator=gen) + 0.5 * torch.eye(40)[0] * 2
    test_same = mmd_permutation_test(reference, same, n_permutations=200)
    test_shifted = mmd_permutation_test(reference, shifted, n_permutations=200)
    assert test_same.p_value > 0.05
    assert test_shifted.p_value < 0.01 and test_shifted.statistic > test_same.statistic
    assert test_shifted.p_value == pytest.approx(1 / 201)  # no permutation came close
    repeat = mmd_permutation_test(reference, same, n_permutations=200)
    assert repeat.p_value == test_same.p_value  # seeded


def test_class_mix_tvd_and_chi_square() -> None:
    mix = class_mix_test([30, 10, 0], [50, 50, 0], ["a", "b", "c"])
    assert mix.new == {"a": 0.75, "b": 0.25, "c": 0.0}
    assert mix.tvd == pytest.approx(0.25)
    expected = scipy_stats.chi2_contingency([[30, 10], [50, 50]], correction=False).pvalue
    assert mix.p_value == pytest.approx(expected)
    assert class_mix_test([5, 5], [50, 50], ["a", "b"]).p_value == pytest.approx(1.0)


def test_ood_share_binomial_and_the_verdict_rule() -> None:
    # P(X >= 1) for X ~ Binomial(10, 0.05) = 1 - 0.95**10
    assert ood_share_p_value(1, 10, 0.05) == pytest.approx(1 - 0.95 ** 10)
    calm = verdict(100, None, None, (5, 0.05))
    assert not calm.drifted and calm.reasons == [] and calm.ood_share == 0.05
    alarmed = verdict(100, None, None, (20, 0.05))
    assert alarmed.drifted and "out of distribution" in alarmed.reasons[0]
    document = alarmed.to_dict()
    for key in ("n_new", "ood_share", "expected_ood_share", "feature_distance", "class_mix",
                "drifted", "reasons"):
        assert key in document
