"""PatchCore math: patch aggregation, exact greedy coreset, nearest neighbours and scores."""

from __future__ import annotations

import math

import pytest
import torch

from vitkit.anomaly import patchcore
from vitkit.anomaly.patchcore import (
    greedy_coreset,
    locally_aware_patches,
    naive_greedy_coreset,
    nearest_neighbours,
    patchcore_scores,
)


def _brute_force(queries: torch.Tensor, bank: torch.Tensor,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    distances = torch.cdist(queries.double(), bank.double())
    values, indices = torch.topk(distances, k, dim=1, largest=False)
    return values.float(), indices


def test_locally_aware_patches_average_neighbours_and_align_grids() -> None:
    fine = torch.zeros(1, 1, 5, 5)
    fine[0, 0, 2, 2] = 9.0  # an impulse: its 3x3 neighbours see 9 / 9 = 1
    coarse = torch.arange(4.0).reshape(1, 1, 2, 2)
    patches = locally_aware_patches([fine, coarse])
    assert patches.shape == (1, 2, 5, 5)
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = 1.0
    torch.testing.assert_close(patches[0, 0], expected)
    # Border cells count the missing cells as zeros (the reference code's zero padding):
    # a constant map keeps its value inside, 6/9 of it on edges and 4/9 in corners.
    constant = locally_aware_patches([torch.full((1, 1, 4, 6), 9.0)])[0, 0]
    assert constant[1:-1, 1:-1].eq(9.0).all()
    assert constant[0, 1:-1].eq(6.0).all() and constant[1:-1, 0].eq(6.0).all()
    assert constant[0, 0] == constant[-1, -1] == 4.0
    # The 2x2 coarse map is pooled first (each cell sees the 4 values, 0+1+2+3 = 6, over 9) ...
    torch.testing.assert_close(patches[0, 1], torch.full((5, 5), 6.0 / 9.0))
    # ... and upsampled bilinearly (half-pixel centres), seen here without the pooling.
    aligned = locally_aware_patches([torch.zeros(1, 1, 4, 4), coarse], neighbourhood=1)
    torch.testing.assert_close(aligned[0, 1, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    torch.testing.assert_close(aligned[0, 1, :, 0], torch.tensor([0.0, 0.5, 1.5, 2.0]))
    assert locally_aware_patches([fine], neighbourhood=1).equal(fine)


def test_nearest_neighbours_match_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(300, 24, generator=gen) + 5.0  # off-centre, as real features are
    queries = torch.randn(50, 24, generator=gen) + 5.0
    for k in (1, 4):
        distances, indices = nearest_neighbours(queries, bank, k, chunk_size=7)
        expected_distances, expected_indices = _brute_force(queries, bank, k)
        assert indices.dtype == torch.long and indices.shape == (50, k)
        assert torch.equal(indices, expected_indices)
        torch.testing.assert_close(distances, expected_distances, rtol=1e-5, atol=1e-5)


def test_nearest_neighbours_split_the_bank_and_handle_duplicates(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patchcore, "_SCORE_BLOCK", 64)  # many tiny bank blocks
    gen = torch.Generator().manual_seed(1)
    bank = torch.randn(97, 5, generator=gen)
    queries = torch.cat([bank[:3], torch.randn(10, 5, generator=gen)])  # exact hits first
    distances, indices = nearest_neighbours(queries, bank, 3, chunk_size=4)
    expected_distances, expected_indices = _brute_force(queries, bank, 3)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(distances, expected_distances, rtol=1e-5, atol=1e-5)
    assert torch.equal(distances[:3, 0], torch.zeros(3))  # clamped, never NaN


def test_low_precision_ranking_is_rechecked_in_float32() -> None:
    gen = torch.Generator().manual_seed(2)
    bank = torch.randn(2000, 64, generator=gen) * 3 + 10
    queries = bank[torch.randperm(2000, generator=gen)[:200]] + 0.3 * torch.randn(200, 64,
                                                                                   generator=gen)
    distances, indices = nearest_neighbours(queries, bank, 2, low_precision=True)
    expected_distances, expected_indices = _brute_force(queries, bank, 2)
    assert torch.equal(indices, expected_indices)
    # Distances come from the float32 re-rank, not from bfloat16.
    torch.testing.assert_close(distances, expected_distances, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("projection_dim", "candidates"), [(32, 2048), (None, 2048), (32, 16)])
def test_greedy_coreset_makes_the_naive_selections(
        monkeypatch: pytest.MonkeyPatch, projection_dim: int | None, candidates: int) -> None:
    # 16 candidates forces hundreds of rounds and candidate compactions.
    monkeypatch.setattr(patchcore, "_CANDIDATES", candidates)
    features = torch.randn(3000, 48, generator=torch.Generator().manual_seed(3))
    fast = greedy_coreset(features, 300, projection_dim, seed=5)
    naive = naive_greedy_coreset(features, 300, projection_dim, seed=5)
    assert fast.dtype == torch.long and fast.shape == (300,)
    assert torch.equal(fast, naive)


def test_greedy_coreset_is_farthest_point_sampling_by_hand() -> None:
    # On a line, with no projection: after the seeded start, each pick is the point farthest
    # from all picks so far.
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0], [15.0], [16.0]])
    selected = greedy_coreset(points, 4, projection_dim=None, seed=0)
    start = int(selected[0])
    expected = [start]
    for _ in range(3):
        gaps = [min(abs(float(points[i, 0] - points[j, 0])) for j in expected) for i in range(6)]
        expected.append(max(range(6), key=lambda i: (gaps[i], -i)))
    assert selected.tolist() == expected


def test_greedy_coreset_seed_decides_the_start() -> None:
    features = torch.randn(500, 16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(greedy_coreset(features, 20, seed=1), greedy_coreset(features, 20, seed=1))
    firsts = {int(greedy_coreset(features, 1, seed=seed)[0]) for seed in range(6)}
    assert len(firsts) > 1
    assert int(greedy_coreset(features, 20, seed=2)[0]) == int(
        naive_greedy_coreset(features, 20, seed=2)[0])


def test_greedy_coreset_never_repeats_a_point_even_among_duplicates() -> None:
    features = torch.randn(40, 8, generator=torch.Generator().manual_seed(5)).repeat(3, 1)
    selected = greedy_coreset(features, 120, projection_dim=None)
    assert sorted(selected.tolist()) == list(range(120))
    # Each of the 40 distinct points is covered before any duplicate is taken.
    assert len({int(i) % 40 for i in selected[:40]}) == 40


def test_greedy_coreset_takes_one_point_per_separated_cluster() -> None:
    gen = torch.Generator().manual_seed(6)
    centres = torch.randn(5, 32, generator=gen) * 50
    labels = torch.arange(5).repeat_interleave(200)
    features = centres[labels] + torch.randn(1000, 32, generator=gen)
    for seed in range(3):
        selected = greedy_coreset(features, 5, projection_dim=16, seed=seed)
        assert sorted(labels[selected].tolist()) == [0, 1, 2, 3, 4]


def test_image_score_reweighting_by_hand() -> None:
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
    # Two patches: one near (0, 0), the worst one at (3, 0) whose nearest bank entry is
    # m* = (1, 0) at distance 2. The 3 nearest bank entries of m* are (1, 0), (0, 0) and
    # (0, 1), at distances 2, 3 and sqrt(10) from the worst patch.
    patches = torch.tensor([[0.1, 0.0], [3.0, 0.0]]).T.reshape(1, 2, 1, 2)
    result = patchcore_scores(patches, bank, num_neighbors=3)
    torch.testing.assert_close(result.patch_scores, torch.tensor([[[0.1, 2.0]]]))
    weight = 1.0 - math.exp(2.0) / (math.exp(2.0) + math.exp(3.0) + math.exp(math.sqrt(10.0)))
    assert float(result.image_scores[0]) == pytest.approx(weight * 2.0, rel=1e-5)
    plain = patchcore_scores(patches, bank, num_neighbors=1)
    assert float(plain.image_scores[0]) == pytest.approx(2.0)


def test_reweighting_keeps_large_distances_finite() -> None:
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    patches = torch.tensor([[500.0, 0.0]]).T.reshape(1, 2, 1, 1)  # exp(499) overflows
    score = patchcore_scores(patches, bank, num_neighbors=3).image_scores
    assert torch.isfinite(score).all() and float(score[0]) > 0.6 * 499


def test_a_generated_defect_patch_scores_highest() -> None:
    gen = torch.Generator().manual_seed(7)
    prototypes = torch.randn(6, 16, generator=gen) * 4  # six kinds of normal texture

    def images(n: int) -> torch.Tensor:
        kinds = torch.randint(0, 6, (n, 8, 8), generator=gen)
        noise = 0.3 * torch.randn(n, 8, 8, 16, generator=gen)
        return (prototypes[kinds] + noise).permute(0, 3, 1, 2)

    normal = images(20).permute(0, 2, 3, 1).reshape(-1, 16)
    bank = normal[greedy_coreset(normal, 128, projection_dim=8)]
    test = images(2)
    test[1, :, 5, 2] = 3.0 * torch.randn(16, generator=gen)  # a patch unlike any texture
    result = patchcore_scores(test, bank)
    assert result.patch_scores.shape == (2, 8, 8)
    flat = int(result.patch_scores[1].argmax())
    assert divmod(flat, 8) == (5, 2)
    assert float(result.image_scores[1]) > 2 * float(result.image_scores[0])


def test_bad_inputs_are_refused_with_a_hint() -> None:
    features = torch.randn(10, 4)
    with pytest.raises(ValueError, match=r"n_select must be in \[1, 10\]"):
        greedy_coreset(features, 11)
    with pytest.raises(ValueError, match=r"n_select must be in \[1, 10\]"):
        naive_greedy_coreset(features, 0)
    with pytest.raises(ValueError, match="projection_dim must be >= 1"):
        greedy_coreset(features, 3, projection_dim=0)
    with pytest.raises(ValueError, match=r"non-empty \(N, D\)"):
        greedy_coreset(torch.randn(10, 4, 1), 3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        greedy_coreset(torch.cat([features, torch.full((1, 4), math.nan)]), 3)
    with pytest.raises(ValueError, match="must share D"):
        nearest_neighbours(torch.randn(3, 5), features)
    with pytest.raises(ValueError, match=r"k must be in \[1, 10\]"):
        nearest_neighbours(torch.randn(3, 4), features, k=11)
    with pytest.raises(ValueError, match="patches must be"):
        patchcore_scores(torch.randn(4, 2, 2), features)
    with pytest.raises(ValueError, match="D=4"):
        patchcore_scores(torch.randn(1, 5, 2, 2), features)
    with pytest.raises(ValueError, match=r"num_neighbors must be in \[1, 10\]"):
        patchcore_scores(torch.randn(1, 4, 2, 2), features, num_neighbors=11)
    with pytest.raises(ValueError, match="positive odd"):
        locally_aware_patches([torch.randn(1, 2, 4, 4)], neighbourhood=2)
    with pytest.raises(ValueError, match="batch size"):
        locally_aware_patches([torch.randn(1, 2, 4, 4), torch.randn(2, 2, 2, 2)])


def test_greedy_coreset_reports_progress_to_the_last_point() -> None:
    features = torch.randn(600, 16, generator=torch.Generator().manual_seed(0))
    seen: list[int] = []
    index = patchcore.greedy_coreset(features, 60, projection_dim=None, on_progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 60
    assert torch.equal(index, patchcore.greedy_coreset(features, 60, projection_dim=None))


def test_image_score_rules_from_patch_scores() -> None:
    patch_scores = torch.arange(100.0).reshape(1, 10, 10)  # 0 … 99
    assert patchcore.image_scores_from_patches(patch_scores, "max").item() == 99.0
    assert patchcore.image_scores_from_patches(patch_scores, "top1").item() == 99.0  # 1 patch
    assert patchcore.image_scores_from_patches(patch_scores, "top3").item() == 98.0
    assert patchcore.image_scores_from_patches(patch_scores, "top10").item() == 94.5
    with pytest.raises(ValueError, match="top1, top3"):
        patchcore.image_scores_from_patches(patch_scores, "median")


def test_the_config_offers_exactly_the_image_score_rules_patchcore_knows() -> None:
    from typing import get_args

    from vitkit.anomaly.config import ImageScore

    assert get_args(ImageScore) == patchcore.IMAGE_SCORES
