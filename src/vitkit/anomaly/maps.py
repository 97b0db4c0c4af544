"""From low-resolution patch score maps to smooth full-size anomaly maps (pure torch)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Kernel radius in standard deviations: weights beyond 4 sigma are below 4e-4 of the peak.
_TRUNCATE = 4.0


def gaussian_kernel1d(sigma: float, radius: int, dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian weights of shape ``(2 * radius + 1,)``."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (x / sigma) ** 2)
    return (weights / weights.sum()).to(dtype=dtype, device=device)


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0,
                  truncate: float = _TRUNCATE) -> torch.Tensor:
    """Separable Gaussian smoothing of each map, with reflect padding at the borders.

    The kernel radius is ``ceil(truncate * sigma)``, shortened on an axis to ``size - 1`` when
    the map is smaller than that (reflect padding cannot reach further); weights are
    renormalised, so a constant map stays constant and, away from the borders, the sum of a
    map is preserved.

    Args:
        maps: ``(B, H, W)`` floating-point maps.
        sigma: Standard deviation in pixels; ``0`` returns the maps unchanged.
        truncate: The kernel reaches this many standard deviations (4 by default).

    Returns:
        ``(B, H, W)`` smoothed maps, same dtype and device.

    Raises:
        ValueError: If ``maps`` is not a 3-D floating tensor or ``sigma`` is negative/not finite.
    """
    _check_maps(maps, "maps")
    sigma = _check_sigma(sigma)
    if sigma == 0.0 or maps.numel() == 0:
        return maps
    # Half precision convolutions are slow or missing on CPU; compute in float32.
    work = maps.float() if maps.dtype in (torch.float16, torch.bfloat16) else maps
    x = work.unsqueeze(1)  # (B, 1, H, W)
    height, width = maps.shape[-2:]
    radius = math.ceil(truncate * sigma)
    radius_h, radius_w = min(radius, height - 1), min(radius, width - 1)
    if radius_w > 0:
        kernel = gaussian_kernel1d(sigma, radius_w, x.dtype, x.device).view(1, 1, 1, -1)
        x = F.conv2d(F.pad(x, (radius_w, radius_w, 0, 0), mode="reflect"), kernel)
    if radius_h > 0:
        kernel = gaussian_kernel1d(sigma, radius_h, x.dtype, x.device).view(1, 1, -1, 1)
        x = F.conv2d(F.pad(x, (0, 0, radius_h, radius_h), mode="reflect"), kernel)
    return x.squeeze(1).to(maps.dtype)


def upsample_map(patch_map: torch.Tensor, size: tuple[int, int],
                 sigma: float = 4.0) -> torch.Tensor:
    """Bilinear upsampling of patch score maps to the image size, then Gaussian smoothing.

    Patch ``(i, j)`` of an ``h x w`` grid lands on pixels ``[i * H / h, (i + 1) * H / h)`` by
    ``[j * W / w, (j + 1) * W / w)`` (``align_corners=False``), matching a grid of patches
    that tiles the image.

    Args:
        patch_map: ``(B, h, w)`` floating-point patch scores.
        size: Output ``(H, W)`` in pixels.
        sigma: Smoothing standard deviation in *output* pixels; ``0`` = no smoothing.

    Returns:
        ``(B, H, W)`` maps, same dtype and device as ``patch_map``.

    Raises:
        ValueError: If the map is not ``(B, h, w)`` floating point, ``size`` is not two
            positive ints, or ``sigma`` is negative.
    """
    _check_maps(patch_map, "patch_map")
    size = _check_size(size)
    sigma = _check_sigma(sigma)
    work = patch_map.float() if patch_map.dtype in (torch.float16, torch.bfloat16) else patch_map
    upsampled = F.interpolate(work.unsqueeze(1), size=size, mode="bilinear",
                              align_corners=False).squeeze(1)
    return gaussian_blur(upsampled, sigma).to(patch_map.dtype)


def _check_maps(maps: torch.Tensor, name: str) -> None:
    if not isinstance(maps, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, H, W), got "
                         f"{type(maps).__name__}")
    if maps.ndim != 3:
        raise ValueError(f"{name} must have shape (B, H, W), got {tuple(maps.shape)}; "
                         "use .unsqueeze(0) for a single map")
    if not maps.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {maps.dtype}; call .float()")


def _check_sigma(sigma: float) -> float:
    value = float(sigma)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"sigma must be a finite number >= 0 (pixels; 0 = no smoothing), "
                         f"got {sigma}")
    return value


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
        valid = all(int(v) == v for v in size)
    except (TypeError, ValueError):
        valid = False
    if not valid or height < 1 or width < 1:
        raise ValueError(f"size must be (H, W) with two positive ints, got {size!r}")
    return height, width


def check_feature_maps(feature_maps: list[torch.Tensor]) -> None:
    """Raises ValueError unless ``feature_maps`` is a non-empty list of ``(B, C, h, w)`` maps
    with one batch size (the input contract of PaDiM's and PatchCore's math)."""
    if not feature_maps:
        raise ValueError("feature_maps is empty: pass at least one (B, C, h, w) map.")
    shapes = [tuple(fmap.shape) for fmap in feature_maps]
    if any(len(shape) != 4 for shape in shapes):
        raise ValueError(f"every feature map must be (B, C, h, w), got shapes {shapes}")
    if len({shape[0] for shape in shapes}) != 1:
        raise ValueError(f"feature maps disagree on the batch size: shapes {shapes}")
