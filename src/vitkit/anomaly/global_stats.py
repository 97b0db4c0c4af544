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

GLOBAL_WEIGHT_MAX = 8.0
"""The largest power on the global part. The spread ratio asks for far more when the global
distances of the normal images barely vary (in float32's last bits, e.g. near-identical
images): then a global distance twice the typical one became infinite (every such defect
tied, and normal images a few bits above the median scored like defects). Measured weights
are far below it: 0.47 (paper BDP), 0.29 (paper FLR), 0.54 (deeppcb; efficientnet_lite0,
224 px, out of fold); the former rule was 1. At 8 a global distance 10% above the typical
one already counts as 2.1 typical patch scores and a doubled one as 256, and the combined
score stays finite in float32 up to e^(88/8) ~ 60,000 times the typical distance. Where the
cap applies, the global part of the normal images varies less than their patch part: it can
cost sensitivity to faint global changes, but it cannot let the global part outweigh the
patch part on normal images more than the uncapped power would."""


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


def global_weight(patch_scores: torch.Tensor, global_scores: torch.Tensor) -> float:
    """The power that gives the global part, in units of its typical normal image, the same
    spread over the normal images as the patch part: ``MAD(log patch) / MAD(log global)``.

    The two parts are then compared as ``max(patch / its median, (global / its median) **
    weight)``. With a weight of 1 (the rule before it was measured) the part that varies more
    between normal images decides for most of them and hides the other part's anomalies;
    e.g. paper BDP at 224 px, image AUROC 0.997 with 1, 1.000 with this weight. 1 when
    either spread is degenerate (fewer than 3 images, or identical scores); at most
    :data:`GLOBAL_WEIGHT_MAX` when the global scores barely vary."""
    if patch_scores.numel() < 3 or global_scores.numel() < 3:
        return 1.0

    def log_spread(scores: torch.Tensor) -> float:
        logs = scores.double().clamp_min(_MIN_REFERENCE).log()
        return float((logs - logs.median()).abs().median())

    patch_spread, overall_spread = log_spread(patch_scores), log_spread(global_scores)
    if patch_spread <= 0 or overall_spread <= 0:
        return 1.0
    return min(patch_spread / overall_spread, GLOBAL_WEIGHT_MAX)


def reference_level(scores: torch.Tensor) -> float:
    """The typical score of held-out normal images (their median), the unit of a component."""
    if scores.numel() == 0:
        raise ValueError("no held-out scores to take a reference from")
    return max(float(scores.median()), _MIN_REFERENCE)
