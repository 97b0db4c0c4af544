"""OOD scores against values computed by hand, and a contract every method must meet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

from vitkit.ood import scores
from vitkit.ood.metrics import auroc
from vitkit.ood.scores import (
    METHODS,
    TrainingSet,
    default_knn_k,
    default_vim_dim,
    fit_knn,
    fit_mahalanobis,
    fit_relative_mahalanobis,
    fit_vim,
    kth_largest_similarity,
    ledoit_wolf,
    score_energy,
    score_knn,
    score_mahalanobis,
    score_msp,
    score_relative_mahalanobis,
    score_vim,
    whitening,
)


def test_msp_and_energy_by_hand() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0]])
    # softmax of (0, log 3) is (1/4, 3/4); of (2, 2) is (1/2, 1/2)
    torch.testing.assert_close(score_msp({}, torch.zeros(2, 1), logits),
                               torch.tensor([-0.75, -0.5], dtype=torch.float64))
    energy = score_energy({"temperature": torch.tensor([2.0])}, torch.zeros(2, 1), logits)
    expected = [-2.0 * math.log(1.0 + 3.0 ** 0.5), -2.0 * (1.0 + math.log(2.0))]
    torch.testing.assert_close(energy, torch.tensor(expected, dtype=torch.float64))


def test_mahalanobis_distance_is_the_textbook_one() -> None:
    # Covariance diag(4, 1): one unit of distance is 2 along x and 1 along y.
    covariance = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    w = whitening(covariance)
    torch.testing.assert_close(w.T @ w, torch.linalg.inv(covariance))
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    stats = {"whitening": w.float(), "whitened_means": (means @ w.T).float()}
    points = torch.tensor([[2.0, 0.0], [0.0, 2.0], [9.0, 1.0]])
    # (2,0): 2²/4 = 1 from class 0; (0,2): 2²/1 = 4; (9,1): 1/4 + 1 = 1.25 from class 1
    torch.testing.assert_close(score_mahalanobis(stats, points, torch.zeros(3, 2)),
                               torch.tensor([1.0, 4.0, 1.25], dtype=torch.float64))


def test_fitted_mahalanobis_recovers_known_gaussians() -> None:
    gen = torch.Generator().manual_seed(0)
    cov = torch.tensor([[4.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    means = torch.tensor([[0.0, 0.0], [20.0, 5.0]], dtype=torch.float64)
    targets = torch.arange(20000) % 2
    x = means[targets] + torch.randn(20000, 2, generator=gen, dtype=torch.float64) @ chol.T
    stats = fit_mahalanobis(TrainingSet(x, torch.zeros(20000, 2), targets))
    assert float(stats["shrinkage"]) < 0.01  # plenty of data: hardly any shrinkage
    query = torch.tensor([[2.0, 2.0], [21.0, 4.0]], dtype=torch.float64)
    precision = torch.linalg.inv(cov)
    expected = torch.stack([(q - means[c]) @ precision @ (q - means[c])
                            for q, c in zip(query, (0, 1), strict=True)])
    torch.testing.assert_close(score_mahalanobis(stats, query, torch.zeros(2, 2)), expected,
                               rtol=0.03, atol=0.0)


def test_ledoit_wolf_keeps_the_hand_written_estimate() -> None:
    """The formula vitkit computed by hand before it called scikit-learn (Ledoit and Wolf
    2004, as scikit-learn writes it), against what it returns now."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(60, 20, generator=generator, dtype=torch.float64) @ torch.randn(
        20, 20, generator=generator, dtype=torch.float64)  # correlated: shrinkage inside (0, 1)
    x = x - x.mean(0)
    n, d = x.shape
    emp = x.T @ x / n
    mu = float(emp.diagonal().sum()) / d
    delta_sum = float((emp * emp).sum())
    beta = (float(((x * x).T @ (x * x)).sum()) / n - delta_sum) / (d * n)
    delta = (delta_sum - 2.0 * mu * float(emp.diagonal().sum()) + d * mu * mu) / d
    expected_shrinkage = min(beta, delta) / delta
    expected = (1.0 - expected_shrinkage) * emp + expected_shrinkage * mu * torch.eye(
        d, dtype=torch.float64)
    ours, shrinkage = ledoit_wolf(x)
    assert 0.0 < expected_shrinkage < 1.0
    assert shrinkage == pytest.approx(expected_shrinkage, rel=1e-10)
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)


def test_relative_mahalanobis_is_zero_with_one_class() -> None:
    # One class: the class Gaussian and the class-agnostic one are the same Gaussian.
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(2))
    stats = fit_relative_mahalanobis(TrainingSet(x, torch.zeros(200, 1),
                                                 torch.zeros(200, dtype=torch.long)))
    query = torch.randn(5, 3, generator=torch.Generator().manual_seed(3)) * 5
    torch.testing.assert_close(score_relative_mahalanobis(stats, query, torch.zeros(5, 1)),
                               torch.zeros(5, dtype=torch.float64), atol=1e-4, rtol=0)


def test_knn_is_the_cosine_distance_to_the_kth_neighbour() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]])  # normalised when fitted
    train = TrainingSet(bank, torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    query = torch.tensor([[5.0, 0.0]])
    distances = [float(score_knn(fit_knn(train, k=k), query, torch.zeros(1, 1))[0])
                 for k in (1, 2, 3)]
    assert distances == pytest.approx([0.0, 1.0, 2.0], abs=1e-6)  # 0°, 90°, 180°
    assert int(fit_knn(train, k=50)["k"]) == 3  # never more than the bank holds
    assert fit_knn(train)["bank"].dtype == torch.float32


def test_a_large_knn_bank_is_stored_in_half_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scores, "KNN_FLOAT32_ELEMENTS", 100)
    x = torch.randn(60, 4, generator=torch.Generator().manual_seed(6))
    train = TrainingSet(x, torch.zeros(60, 1), torch.zeros(60, dtype=torch.long))
    stats = fit_knn(train, k=3)
    assert stats["bank"].dtype == torch.float16
    exact = 1.0 - (torch.nn.functional.normalize(x[:5], dim=1)
                   @ torch.nn.functional.normalize(x, dim=1).T).topk(3, dim=1).values[:, 2]
    torch.testing.assert_close(score_knn(stats, x[:5], torch.zeros(5, 1)).float(), exact,
                               atol=2e-3, rtol=0)


def test_knn_chunked_search_equals_a_plain_top_k(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(4)
    queries, bank = torch.randn(37, 8, generator=gen), torch.randn(301, 8, generator=gen)
    monkeypatch.setattr(scores, "_QUERY_CHUNK", 10)
    monkeypatch.setattr(scores, "_BANK_CHUNK", 64)
    expected = (queries @ bank.T).topk(7, dim=1).values[:, 6]
    torch.testing.assert_close(kth_largest_similarity(queries, bank, 7), expected)


def test_default_sizes() -> None:
    assert default_knn_k(245) == 49
    assert default_knn_k(100_000) == 50
    assert default_knn_k(3) == 1
    assert default_vim_dim(1280, 245) == 122  # N images span at most N dimensions
    assert default_vim_dim(768, 100_000) == 512
    assert default_vim_dim(192, 100_000) == 96


def test_vim_on_a_constructed_example() -> None:
    # Head: logits = (x1 - 1, x2 - 1), so the origin u = -pinv(W) b = (1, 1, 0).
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b = torch.tensor([-1.0, -1.0])
    u = torch.tensor([1.0, 1.0, 0.0])
    # Around u the training features vary by ±4 along e1 and ±1 along e3: principal axis e1,
    # every residual is 1; logits (t, 0) have max 4 or 0, mean 2, so alpha = 2 / 1.
    offsets = torch.tensor([[4.0, 0, 1], [-4.0, 0, 1], [4.0, 0, -1], [-4.0, 0, -1]])
    features = u + offsets
    train = TrainingSet(features, features @ w.T + b, torch.zeros(4, dtype=torch.long), w, b)
    stats = fit_vim(train, dim=1)
    torch.testing.assert_close(stats["origin"], u)
    assert float(stats["alpha"]) == pytest.approx(2.0)
    query = torch.tensor([[1.0, 4.0, 0.0]])  # residual 3 (all along e2), logits (0, 3)
    expected = 2.0 * 3.0 - math.log(1.0 + math.exp(3.0))
    assert float(score_vim(stats, query, query @ w.T + b)[0]) == pytest.approx(expected)


def _blobs(seed: int) -> tuple[TrainingSet, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor]:
    """Four classes in 16-D with a nearest-centre linear head; the OOD points sit between the
    classes, where no class is likely (far off-manifold points would fool msp and energy:
    a linear head grows more confident the farther a point goes, the known failure)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 16, generator=gen) * 4
    w = centres.clone()
    b = -0.5 * (centres * centres).sum(1)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 4
        x = centres[y] + torch.randn(n, 16, generator=gen)
        return x, y

    x, y = sample(400)
    val, _ = sample(100)
    ood = centres.mean(0) + torch.randn(100, 16, generator=gen)
    return TrainingSet(x, x @ w.T + b, y, w, b), val, val @ w.T + b, ood, ood @ w.T + b


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_scores_far_points_higher(name: str) -> None:
    train, val, val_logits, ood, ood_logits = _blobs(5)
    method = METHODS[name]
    stats = method.fit(train)
    assert all(isinstance(v, torch.Tensor) for v in stats.values())
    s_val = method.score(stats, val, val_logits)
    s_ood = method.score(stats, ood, ood_logits)
    assert s_val.shape == (100,) and s_val.dtype == torch.float64
    assert torch.isfinite(s_val).all() and torch.isfinite(s_ood).all()
    assert auroc(s_val.numpy(), s_ood.numpy()) > 0.9
    again = method.score(method.fit(train), val, val_logits)
    torch.testing.assert_close(again, s_val)  # deterministic


def test_the_shared_covariance_comes_from_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    """One Ledoit-Wolf in the project: the Mahalanobis fits call scikit-learn's."""
    import sklearn.covariance

    calls: list[tuple[int, ...]] = []

    def spy(x: np.ndarray, **kwargs: object) -> tuple[np.ndarray, float]:
        calls.append(x.shape)
        return sklearn_ledoit_wolf(x, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sklearn.covariance, "ledoit_wolf", spy)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(4))
    fit_relative_mahalanobis(TrainingSet(x, torch.zeros(40, 2), torch.arange(40) % 2))
    assert calls == [(40, 6), (40, 6)]  # the class-centred and the class-agnostic Gaussian
