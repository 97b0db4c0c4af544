"""Image-level feature statistics: values, the Gaussian fit and its distances."""

from __future__ import annotations

import pytest
import torch

from vitkit.anomaly.global_stats import (
    fit_global_gaussian,
    global_distances,
    global_weight,
    image_statistics,
    reference_level,
)


def test_statistics_are_per_channel_mean_and_spread_of_every_map() -> None:
    first = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]], [[2.0, 2.0], [2.0, 2.0]]]])  # (1, 2, 2, 2)
    second = torch.full((1, 1, 1, 1), 5.0)
    stats = image_statistics([first, second])
    # first: means (2, 2), spreads (1, 0); second: mean 5, spread 0.
    torch.testing.assert_close(stats, torch.tensor([[2.0, 2.0, 1.0, 0.0, 5.0, 0.0]]))


def test_a_whole_image_change_is_far_and_normal_images_are_near() -> None:
    gen = torch.Generator().manual_seed(0)
    normal = torch.randn(60, 4, 8, 8, generator=gen)
    model = fit_global_gaussian(image_statistics([normal]))
    fresh = image_statistics([torch.randn(20, 4, 8, 8, generator=gen)])
    flatter = image_statistics([0.6 * torch.randn(20, 4, 8, 8, generator=gen)])  # less contrast
    near, far = global_distances(fresh, model), global_distances(flatter, model)
    assert float(far.min()) > float(near.max())


def test_fewer_images_than_dimensions_and_identical_images_stay_finite() -> None:
    gen = torch.Generator().manual_seed(1)
    few = fit_global_gaussian(image_statistics([torch.randn(5, 40, 4, 4, generator=gen)]))
    assert torch.isfinite(few.precision).all()
    same = torch.randn(1, 3, 4, 4, generator=gen).repeat(6, 1, 1, 1)
    model = fit_global_gaussian(image_statistics([same]))
    assert float(global_distances(image_statistics([same[:1]]), model)[0]) == pytest.approx(0.0)
    moved = global_distances(image_statistics([same[:1] + 0.1]), model)
    assert float(moved[0]) > 10.0


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        fit_global_gaussian(torch.zeros(1, 3))
    model = fit_global_gaussian(torch.randn(10, 3))
    with pytest.raises(ValueError, match="layers of the fit"):
        global_distances(torch.zeros(2, 4), model)
    with pytest.raises(ValueError, match="non-empty"):
        image_statistics([])
    assert reference_level(torch.tensor([0.0, 0.0])) > 0.0


def test_the_global_part_is_stretched_to_vary_like_the_patch_part() -> None:
    # log-spreads (median absolute deviation of the logs): patch 0.2, global 0.05.
    patch = torch.tensor([1.0, 1.0, 1.0]) * torch.tensor([0.2, 0.0, -0.2]).exp()
    overall = torch.tensor([30.0, 30.0, 30.0]) * torch.tensor([0.05, 0.0, -0.05]).exp()
    assert global_weight(patch, overall) == pytest.approx(4.0)
    assert global_weight(patch[:2], overall[:2]) == 1.0  # too few images to measure a spread
    assert global_weight(patch, torch.full((3,), 30.0)) == 1.0  # no spread: the former rule


def test_bundles_fitted_before_the_weight_keep_their_scores() -> None:
    from vitkit.anomaly.methods import PatchCoreMethod

    parts = torch.tensor([[2.0, 10.0], [1.0, 40.0]])
    method = PatchCoreMethod.__new__(PatchCoreMethod)
    method.global_stats, method.references, method.global_weight = True, (1.0, 20.0), 1.0
    torch.testing.assert_close(method.combine_parts(parts), torch.tensor([2.0, 2.0]))
    method.global_weight = 2.0  # (40 / 20) ** 2 = 4 outweighs the patch part's 1
    torch.testing.assert_close(method.combine_parts(parts), torch.tensor([2.0, 4.0]))


def test_the_power_is_capped_when_the_global_scores_barely_vary() -> None:
    """Normal images whose global distances differ only in float32's last bits: the spread
    ratio asks for a power of millions, which would turn a global distance twice the typical
    one into infinity (and tie every such defect). The power stops at GLOBAL_WEIGHT_MAX."""
    from vitkit.anomaly.methods import PatchCoreMethod

    patch = torch.tensor([0.2, 0.1, 0.0, -0.1, -0.2]).exp()  # log spread 0.1
    ulp = float(torch.finfo(torch.float32).eps) * 16  # float32 spacing near 30
    overall = 30.0 + ulp * torch.tensor([2.0, 1.0, 0.0, -1.0, -2.0])  # float32
    assert 0.1 / (ulp / 30) > 1e5  # what the uncapped ratio would be
    weight = global_weight(patch, overall)
    method = PatchCoreMethod.__new__(PatchCoreMethod)
    method.global_stats, method.references, method.global_weight = True, (1.0, 30.0), weight
    combined = method.combine_parts(torch.tensor([[1.0, 30.0 + ulp], [1.0, 60.0], [3.0, 30.0]]))
    assert torch.isfinite(combined).all()
    # a normal image stays at its patch part, a global change doubling the distance counts
    # 2 ** 8, a patch defect keeps its own ratio
    torch.testing.assert_close(combined, torch.tensor([1.0, 256.0, 3.0]), rtol=1e-4, atol=0)
    from vitkit.anomaly.global_stats import GLOBAL_WEIGHT_MAX

    assert weight == GLOBAL_WEIGHT_MAX == 8.0
    # weights measured on real sets (0.29-0.47, see global_weight) are far below the cap
    assert global_weight(patch, 30.0 * (torch.tensor([0.4, 0.2, 0.0, -0.2, -0.4]).exp())) \
        == pytest.approx(0.5)
