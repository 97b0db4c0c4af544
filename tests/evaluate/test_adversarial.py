"""FGSM and PGD on a small network trained here on images whose class is their brightness."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from vitkit.evaluate.adversarial import Normalized, fgsm, pgd


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matrices: one thread is faster, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 classes: dark, mid and bright 3x8x8 images with per-pixel noise; margins of about
    0.1 in mean brightness, so a few grey levels of attack start to hurt."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=generator)
    base = 0.35 + 0.15 * y.float()
    x = base.view(-1, 1, 1, 1) + 0.08 * torch.randn((n, 3, 8, 8), generator=generator)
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def trained(one_thread: None, ) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 3))
    model = Normalized(net, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x, y = _data(600, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_epsilon_zero_changes_nothing(trained: nn.Module) -> None:
    x, y = _data(64, seed=2)
    assert torch.equal(fgsm(trained, x, y, 0.0), x)
    assert torch.equal(pgd(trained, x, y, 0.0), x)


def test_attacks_stay_in_the_ball_and_the_pixel_range(trained: nn.Module) -> None:
    x, y = _data(64, seed=2)
    eps = 8 / 255
    for adv in (fgsm(trained, x, y, eps), pgd(trained, x, y, eps, steps=5)):
        assert float((adv - x).abs().max()) <= eps + 1e-6
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    # FGSM moves every pixel not held by the clamp by exactly epsilon.
    moved = (fgsm(trained, x, y, eps) - x).abs()
    inside = (x > eps) & (x < 1 - eps)
    assert torch.allclose(moved[inside], torch.full_like(moved[inside], eps), atol=1e-6)


def test_accuracy_falls_with_epsilon_and_pgd_is_at_least_as_strong(trained: nn.Module) -> None:
    x, y = _data(300, seed=3)
    clean = _accuracy(trained, x, y)
    assert clean > 0.9
    epsilons = [1, 2, 4, 8, 16, 32]
    generator = torch.Generator().manual_seed(0)
    by_fgsm = [_accuracy(trained, fgsm(trained, x, y, e / 255), y) for e in epsilons]
    by_pgd = [_accuracy(trained, pgd(trained, x, y, e / 255, generator=generator), y)
              for e in epsilons]
    assert [clean, *by_fgsm] == sorted([clean, *by_fgsm], reverse=True)
    assert [clean, *by_pgd] == sorted([clean, *by_pgd], reverse=True)
    assert by_fgsm[-1] < 0.5 * clean  # the attack really hurts at 32/255
    assert all(p <= f for p, f in zip(by_pgd, by_fgsm, strict=True))


def test_model_parameters_get_no_gradient(trained: nn.Module) -> None:
    x, y = _data(16, seed=4)
    trained.zero_grad(set_to_none=True)
    pgd(trained, x, y, 4 / 255, steps=2)
    fgsm(trained, x, y, 4 / 255)
    assert all(p.grad is None for p in trained.parameters())


def test_epsilon_outside_the_pixel_range_is_refused(trained: nn.Module) -> None:
    x, y = _data(4, seed=5)
    with pytest.raises(ValueError, match="8/255"):
        fgsm(trained, x, y, 8.0)
