"""Image-level feature statistics: a Gaussian of each image's per-channel feature mean and spread.

Patch methods look for the most unusual *place*. A defect that changes the whole image a little
(a finer weave, lower contrast, a colour cast) leaves every patch close to some normal patch, so
they miss it, and can even score it below normal images. The mean and standard deviation of
every feature channel over the image summarise its texture; a Gaussian of those vectors over
the normal images (Ledoit-Wolf shrinkage: there are often fewer images than dimensions) turns
"how unusual is this image as a whole" into one Mahalanobis distance.

Measured on the textile demo data (efficientnet_lite0, PatchCore's layers, 224 px, 160 normal
images): image AUROC on the ``global`` defects 0.999 with this distance, 0.29-0.36 with
PatchCore's patch score alone.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

# Reference distances below this are treated as this (a degenerate hold-out set of identical
# images would otherwise divide by zero).
_MIN_REFERENCE = 1e-12


class GlobalGaussian(NamedTuple):
    """A Gaussian of image statistics: ``mean (D,)`` and ``precision (D, D)``, float32."""

    mean: torch.Tensor
    precision: torch.Tensor


def image_statistics(feature_maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-channel mean and standard deviation over positions of every map: ``(B, 2 * sum C)``.

    Raises:
        ValueError: If the list is empty or a map is not ``(B, C, h, w)``.
    """
    if not feature_maps or any(fmap.dim() != 4 for fmap in feature_maps):
        raise ValueError("feature_maps must be a non-empty list of (B, C, h, w) maps, got "
                         f"{[tuple(f.shape) for f in feature_maps]}")
    parts = []
    for fmap in feature_maps:
        flat = fmap.float().flatten(2)
        parts.append(flat.mean(dim=2))
        parts.append(flat.std(dim=2, correction=0))
    return torch.cat(parts, dim=1)


def fit_global_gaussian(statistics: torch.Tensor) -> GlobalGaussian:
    """Mean and Ledoit-Wolf shrunk precision of ``(N, D)`` image statistics.

    Raises:
        ValueError: With fewer than 2 images or non-finite statistics.
    """
    from sklearn.covariance import LedoitWolf

    if statistics.dim() != 2 or statistics.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) image statistics, got {tuple(statistics.shape)}")
    values = statistics.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(values).all():
        raise ValueError("image statistics contain NaN or infinite values")
    spread = values.std(axis=0)
    if not spread.any():  # identical images: any change is anomalous, at a data-scaled rate
        scale = max(float(np.abs(values).mean()), 1.0) * 1e-3
        precision = np.eye(values.shape[1]) / scale**2
    else:
        precision = LedoitWolf().fit(values).precision_
    return GlobalGaussian(torch.from_numpy(values.mean(axis=0)).float(),
                          torch.from_numpy(precision).float())


def global_distances(statistics: torch.Tensor, model: GlobalGaussian) -> torch.Tensor:
    """Mahalanobis distance of each image's statistics to the Gaussian: ``(B,)``."""
    if statistics.dim() != 2 or statistics.shape[1] != model.mean.shape[0]:
        raise ValueError(f"statistics must be (B, {model.mean.shape[0]}), got "
                         f"{tuple(statistics.shape)}; use the layers of the fit.")
    delta = statistics.float() - model.mean
    squared = ((delta @ model.precision) * delta).sum(dim=1)
    return squared.clamp_min(0.0).sqrt()


def reference_level(scores: torch.Tensor) -> float:
    """The typical score of held-out normal images (their median), the unit of a component."""
    if scores.numel() == 0:
        raise ValueError("no held-out scores to take a reference from")
    return max(float(scores.median()), _MIN_REFERENCE)
