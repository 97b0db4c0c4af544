"""PaDiM math: Gaussian fit per position, shrinkage and Mahalanobis maps on small known data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitkit.anomaly.padim import (
    GaussianAccumulator,
    PadimModel,
    concat_aligned,
    fit_padim,
    oas_shrinkage,
    padim_distance_map,
    random_channels,
)


def _embeddings(n: int, channels: int, height: int, width: int, seed: int = 0,
                offset: float = 0.0) -> torch.Tensor:
    """Correlated Gaussian embeddings with a different mean at every position; the
    distribution depends on the shape only, ``seed`` draws the samples."""
    fixed = torch.Generator().manual_seed(1234)
    mixing = torch.randn(channels, channels, generator=fixed) / math.sqrt(channels)
    means = torch.randn(height * width, channels, generator=fixed) * 2.0 + offset
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, height * width, channels, generator=gen) @ (mixing + torch.eye(channels))
    return (noise + means).permute(0, 2, 1).reshape(n, channels, height, width)


def _numpy_mahalanobis(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Reference: (B, h, w) distances with np.cov (maximum likelihood), per position."""
    n, channels, height, width = train.shape
    out = np.zeros((test.shape[0], height, width))
    for i in range(height):
        for j in range(width):
            samples = train[:, :, i, j].astype(np.float64)
            inverse = np.linalg.inv(np.cov(samples, rowvar=False, bias=True))
            delta = test[:, :, i, j] - samples.mean(axis=0)
            out[:, i, j] = np.sqrt(np.einsum("bc,cd,bd->b", delta, inverse, delta))
    return out


def test_distance_of_a_diagonal_gaussian_by_hand() -> None:
    # The corners of a rectangle: channel 0 takes 0 and 2 (mean 1, variance 1), channel 1
    # takes 10 and 14 (mean 12, variance 4), uncorrelated. (3, 12) is 2 standard deviations
    # away, (1, 18) is 3, (3, 16) is sqrt(2^2 + 2^2).
    train = torch.tensor([[0.0, 10.0], [2.0, 10.0], [0.0, 14.0], [2.0, 14.0]]).reshape(4, 2, 1, 1)
    model = fit_padim(train, shrinkage=0.0)
    test = torch.tensor([[3.0, 12.0], [1.0, 18.0], [3.0, 16.0]]).reshape(3, 2, 1, 1)
    distances = padim_distance_map(test, model)
    assert distances.shape == (3, 1, 1)
    expected = torch.tensor([2.0, 3.0, math.sqrt(8.0)])
    torch.testing.assert_close(distances.flatten(), expected, rtol=1e-5, atol=1e-5)


def test_distance_map_matches_numpy_mahalanobis() -> None:
    train = _embeddings(40, 4, 3, 2, seed=1)
    test = _embeddings(5, 4, 3, 2, seed=2)
    model = fit_padim(train, shrinkage=0.0)
    ours = padim_distance_map(test, model, chunk_size=4).numpy()  # chunks of 4 of 6 positions
    np.testing.assert_allclose(ours, _numpy_mahalanobis(train.numpy(), test.numpy()), rtol=1e-4)


def test_streaming_fit_equals_one_shot_fit_even_with_a_large_mean() -> None:
    # A large common offset is where E[xx^T] - mean mean^T loses digits without the shift.
    train = _embeddings(23, 5, 4, 3, seed=3, offset=1000.0)
    one_shot = fit_padim(train, batch_size=1000)
    accumulator = GaussianAccumulator(channels=5, positions=12)
    for start, stop in [(0, 1), (1, 8), (8, 9), (9, 23)]:
        accumulator.update(train[start:stop])
    assert accumulator.count == 23
    streamed = accumulator.finalize()
    assert streamed.grid == one_shot.grid == (4, 3)
    torch.testing.assert_close(streamed.mean, one_shot.mean)
    torch.testing.assert_close(streamed.inv_cov, one_shot.inv_cov, rtol=1e-5, atol=1e-7)
    # And the same numbers as a float64 reference covariance despite the 1000 offset.
    reference = _numpy_mahalanobis(train.numpy(), train[:2].numpy())
    unshrunk = padim_distance_map(train[:2], fit_padim(train, shrinkage=0.0))
    np.testing.assert_allclose(unshrunk.numpy(), reference, rtol=1e-3)


def test_oas_coefficient_matches_the_papers_formula() -> None:
    rng = np.random.default_rng(4)
    n, channels = 12, 6
    samples = rng.normal(size=(n, channels)) @ rng.normal(size=(channels, channels))
    covariance = np.cov(samples, rowvar=False, bias=True)
    trace, trace_sq = np.trace(covariance), np.trace(covariance @ covariance)
    # Chen et al. 2010, eq. 23.
    expected = min(1.0, ((1 - 2 / channels) * trace_sq + trace**2)
                   / ((n + 1 - 2 / channels) * (trace_sq - trace**2 / channels)))
    got = oas_shrinkage(torch.from_numpy(covariance)[None], n)
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(expected, rel=1e-10)
    assert 0.0 < expected < 1.0


def test_oas_agrees_with_scikit_learn_for_many_channels() -> None:
    from sklearn.covariance import oas

    rng = np.random.default_rng(5)
    samples = rng.normal(size=(30, 60)) * rng.uniform(0.5, 2.0, size=60)
    covariance = np.cov(samples, rowvar=False, bias=True)
    _, sklearn_value = oas(samples)
    # scikit-learn drops the 2/p terms of eq. 23, a 1/p-sized difference.
    ours = float(oas_shrinkage(torch.from_numpy(covariance)[None], 30)[0])
    assert ours == pytest.approx(sklearn_value, rel=0.05)


def test_automatic_shrinkage_moves_toward_the_identity_with_few_images() -> None:
    few = fit_padim(_embeddings(5, 8, 1, 1, seed=6), shrinkage=None)
    many = fit_padim(_embeddings(400, 8, 1, 1, seed=6), shrinkage=None)

    def condition(model: PadimModel) -> float:
        eigenvalues = torch.linalg.eigvalsh(model.inv_cov[0].double())
        return float(eigenvalues.max() / eigenvalues.min())

    # Shrinkage toward a scaled identity squeezes the spread of eigenvalues.
    assert condition(few) < condition(many)


@pytest.mark.parametrize("shrinkage", [None, 0.0, 0.3])
def test_fewer_images_than_channels_stays_invertible(shrinkage: float | None) -> None:
    train = _embeddings(3, 12, 2, 2, seed=7)  # rank-2 sample covariance, 12 channels
    model = fit_padim(train, shrinkage=shrinkage)
    assert torch.isfinite(model.inv_cov).all()
    eigenvalues = torch.linalg.eigvalsh(model.inv_cov.double())
    assert (eigenvalues > 0).all()
    distances = padim_distance_map(_embeddings(2, 12, 2, 2, seed=8), model)
    assert torch.isfinite(distances).all() and (distances > 0).all()


def test_identical_images_give_a_finite_model_that_flags_any_change() -> None:
    image = _embeddings(1, 6, 3, 3, seed=9)
    model = fit_padim(image.repeat(10, 1, 1, 1))
    assert torch.isfinite(model.inv_cov).all()
    torch.testing.assert_close(model.mean, image.reshape(6, 9).T)
    same = padim_distance_map(image, model)
    changed = image.clone()
    changed[0, :, 1, 2] += 0.01
    moved = padim_distance_map(changed, model)
    assert float(same.max()) == pytest.approx(0.0, abs=1e-3)
    # With no spread at all the ridge is 1% of the raw second moment (~1 here): a change of
    # 0.01 in 6 channels is then sqrt(6 * 0.01**2 / 0.01) ~ 0.24 / sqrt(second moment).
    assert float(moved[0, 1, 2]) > 0.05
    assert float(moved[0, 1, 2]) > 100 * float(moved[0, 0, 0])


def test_a_shifted_region_peaks_at_its_position() -> None:
    train = _embeddings(60, 6, 7, 7, seed=10)
    model = fit_padim(train)
    test = _embeddings(1, 6, 7, 7, seed=11)
    test[0, :, 4:6, 1:3] += 4.0  # a 2x2 defect: every channel shifted by about 4 sigma
    distances = padim_distance_map(test, model)[0]
    inside = distances[4:6, 1:3]
    outside = distances.clone()
    outside[4:6, 1:3] = 0
    assert float(inside.min()) > float(outside.max())


def test_concat_aligned_upsamples_with_nearest_neighbour() -> None:
    fine = torch.zeros(2, 1, 4, 4)
    coarse = torch.arange(8.0).reshape(2, 1, 2, 2)
    stacked = concat_aligned([fine, coarse])
    assert stacked.shape == (2, 2, 4, 4)
    expected = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    torch.testing.assert_close(stacked[0, 1], expected)
    torch.testing.assert_close(stacked[1, 1], expected + 4)
    torch.testing.assert_close(stacked[:, 0], fine[:, 0])


def test_random_channels_is_a_seeded_sorted_subset() -> None:
    chosen = random_channels(448, 100, seed=3)
    assert chosen.dtype == torch.long and chosen.shape == (100,)
    assert torch.equal(chosen, torch.sort(chosen).values)
    assert len(set(chosen.tolist())) == 100 and int(chosen.max()) < 448
    assert torch.equal(chosen, random_channels(448, 100, seed=3))
    assert not torch.equal(chosen, random_channels(448, 100, seed=4))
    assert torch.equal(random_channels(50, 80, seed=0), torch.arange(50))


def test_bad_inputs_are_refused_with_a_hint() -> None:
    model = fit_padim(_embeddings(4, 3, 2, 2))
    with pytest.raises(ValueError, match="to match the model"):
        padim_distance_map(torch.zeros(1, 4, 2, 2), model)
    with pytest.raises(ValueError, match="to match the model"):
        padim_distance_map(torch.zeros(1, 3, 2, 3), model)
    with pytest.raises(ValueError, match="to match the model"):
        padim_distance_map(torch.zeros(3, 2, 2), model)
    accumulator = GaussianAccumulator(3, 4)
    with pytest.raises(ValueError, match="before any update"):
        accumulator.finalize()
    with pytest.raises(ValueError, match="do not match the accumulator"):
        accumulator.update(torch.zeros(1, 3, 3, 3))
    accumulator.update(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="differs from the earlier"):
        accumulator.update(torch.zeros(1, 3, 1, 4))
    with pytest.raises(ValueError, match=r"shrinkage must be in \[0, 1\]"):
        accumulator.finalize(1.5)
    with pytest.raises(ValueError, match="non-empty"):
        fit_padim(torch.zeros(0, 3, 2, 2))
    with pytest.raises(ValueError, match="is empty"):
        concat_aligned([])
    with pytest.raises(ValueError, match="batch size"):
        concat_aligned([torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 2, 2)])
    with pytest.raises(ValueError, match="keep >= 1"):
        random_channels(10, 0, seed=0)
