"""L-infinity adversarial examples (FGSM and PGD) in pixel space.

Attacks work on pixels in ``[0, 1]`` (before normalisation), so ``epsilon`` means the same for
every model: ``8 / 255`` lets each pixel move by 8 grey levels. ``forward`` maps such pixels to
logits; wrap a model that expects normalised input in :class:`Normalized`. Adversarial images
are always clamped to ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]


class Normalized(nn.Module):
    """``model((pixels - mean) / std)``: a classifier that takes pixels in ``[0, 1]``."""

    mean: torch.Tensor  # (1, C, 1, 1) buffers
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.mean) / self.std)


def fgsm(forward: Forward, images: torch.Tensor, targets: torch.Tensor,
         epsilon: float) -> torch.Tensor:
    """Fast gradient sign method: one step of ``epsilon`` up the cross-entropy's sign gradient.

    Args:
        forward: Pixels ``(B, 3, H, W)`` in ``[0, 1]`` -> logits ``(B, C)``.
        images: Clean pixels in ``[0, 1]``.
        targets: ``(B,)`` true class indices.
        epsilon: Largest change per pixel, in ``[0, 1]`` units.
    """
    _check_epsilon(epsilon)
    if epsilon == 0:
        return images.detach().clone()
    step = _loss_gradient(forward, images, targets).sign()
    return (images.detach() + epsilon * step).clamp(0.0, 1.0)


def pgd(forward: Forward, images: torch.Tensor, targets: torch.Tensor, epsilon: float,
        steps: int = 10, step_size: float | None = None, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al.): ``steps`` signed-gradient steps of
    ``step_size`` (default ``2.5 * epsilon / steps``), each projected back into the
    ``epsilon`` ball around ``images`` and into ``[0, 1]``; returns the last iterate.

    Args:
        forward: Pixels ``(B, 3, H, W)`` in ``[0, 1]`` -> logits ``(B, C)``.
        images: Clean pixels in ``[0, 1]``.
        targets: ``(B,)`` true class indices.
        epsilon: Radius of the L-infinity ball, in ``[0, 1]`` units.
        steps: Gradient steps (``>= 1``).
        step_size: Change per step; default ``2.5 * epsilon / steps``.
        random_start: Start from a uniform random point of the ball.
        generator: Seeds the random start.
    """
    _check_epsilon(epsilon)
    if steps < 1:
        raise ValueError(f"PGD needs at least one step, got {steps}")
    clean = images.detach()
    if epsilon == 0:
        return clean.clone()
    alpha = 2.5 * epsilon / steps if step_size is None else step_size
    adv = clean.clone()
    if random_start:
        start = torch.rand(clean.shape, generator=generator, dtype=clean.dtype,
                           device=clean.device if generator is None else generator.device)
        adv = (clean + (2 * start.to(clean.device) - 1) * epsilon).clamp(0.0, 1.0)
    for _ in range(steps):
        adv = adv + alpha * _loss_gradient(forward, adv, targets).sign()
        adv = (clean + (adv - clean).clamp(-epsilon, epsilon)).clamp(0.0, 1.0)
    return adv


def _loss_gradient(forward: Forward, images: torch.Tensor, targets: torch.Tensor
                   ) -> torch.Tensor:
    """d(sum of cross-entropy)/d(images); the model's own parameters get no gradient."""
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(forward(x).float(), targets.to(x.device), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _check_epsilon(epsilon: float) -> None:
    if not 0 <= epsilon <= 1:
        raise ValueError(f"epsilon is in [0, 1] pixel units (8/255 = {8 / 255:.4f}); got "
                         f"{epsilon}")
