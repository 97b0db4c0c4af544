"""Grad-CAM and Grad-CAM++ from a layer's activations and the gradients of a class score.

Pure math: tensors in, tensors out. The caller captures ``activations`` of a layer and the
``gradients`` of the explained class's logit with respect to them (see
:mod:`vitkit.explain.explainer`). Conv maps are ``(B, C, H, W)``; a transformer's token maps
``(B, N, C)`` are first laid on their patch grid with :func:`tokens_to_grid`.

Both follow pytorch-grad-cam's definitions, so maps agree with the tool users compare against
(``tests/explain/test_gradcam_reference.py``: efficientnet_lite0 with ImageNet weights on
real photos, grid maps within 4.2e-7 of grad-cam 1.5.7's after the same normalisation; it
also upsamples to the input size, which vitkit leaves to the overlay):

- Grad-CAM (Selvaraju et al., 2017): channel weights are the spatial mean of the gradients;
  the map is ``relu(sum_c w_c * A_c)``.
- Grad-CAM++ (Chattopadhay et al., 2018): per-position weights
  ``a = g^2 / (2 g^2 + sum_xy(A) g^3)`` (zero where ``g == 0``), channel weights
  ``sum_xy(a * relu(g))``; the map is ``relu(sum_c w_c * A_c)``.
"""

from __future__ import annotations

import torch

# Keeps Grad-CAM++'s denominator away from zero (the value pytorch-grad-cam uses).
_PLUS_PLUS_EPS = 1e-6


def gradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM map ``(B, H, W)`` (not normalised) of conv activations ``(B, C, H, W)``."""
    _check_pair(activations, gradients)
    weights = gradients.mean(dim=(2, 3))  # (B, C)
    return _weighted_sum(activations, weights)


def gradcam_plus_plus(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ map ``(B, H, W)`` (not normalised) of conv activations ``(B, C, H, W)``."""
    _check_pair(activations, gradients)
    grads_2 = gradients.pow(2)
    grads_3 = grads_2 * gradients
    sum_activations = activations.sum(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    alpha = grads_2 / (2 * grads_2 + sum_activations * grads_3 + _PLUS_PLUS_EPS)
    alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * gradients.clamp(min=0)).sum(dim=(2, 3))  # (B, C)
    return _weighted_sum(activations, weights)


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int],
                   num_prefix_tokens: int) -> torch.Tensor:
    """Patch tokens ``(B, N, C)`` as a conv map ``(B, C, h, w)``; prefix tokens dropped.

    Args:
        tokens: A transformer layer's output, prefix tokens (class, distillation, registers)
            first, then the patches in row-major order.
        grid: ``(h, w)``: patches per column and per row of the input.
        num_prefix_tokens: How many tokens come before the patches.

    Raises:
        ValueError: If ``N - num_prefix_tokens`` is not ``h * w``.
    """
    if tokens.ndim != 3:
        raise ValueError(f"tokens must have shape (B, N, C), got {tuple(tokens.shape)}")
    height, width = grid
    patches = tokens[:, num_prefix_tokens:]  # (B, h*w, C)
    if patches.shape[1] != height * width:
        raise ValueError(f"{tokens.shape[1]} tokens minus {num_prefix_tokens} prefix tokens do "
                         f"not fill a {height}x{width} patch grid")
    return patches.reshape(tokens.shape[0], height, width, -1).permute(0, 3, 1, 2)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each map of ``(B, H, W)`` scaled to ``[0, 1]`` (min to 0, max to 1; flat maps to 0)."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    shifted = flat - low
    high = shifted.max(dim=1, keepdim=True).values
    scaled = shifted / high.clamp(min=torch.finfo(maps.dtype).tiny)
    return torch.where(high > 0, scaled, torch.zeros_like(scaled)).reshape(maps.shape)


def _weighted_sum(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    cam = torch.einsum("bchw,bc->bhw", activations, weights)
    return cam.clamp(min=0)


def _check_pair(activations: torch.Tensor, gradients: torch.Tensor) -> None:
    if activations.ndim != 4:
        raise ValueError("activations must have shape (B, C, H, W), got "
                         f"{tuple(activations.shape)}; lay token maps on their grid with "
                         "tokens_to_grid first")
    if gradients.shape != activations.shape:
        raise ValueError(f"gradients {tuple(gradients.shape)} do not match activations "
                         f"{tuple(activations.shape)}")
