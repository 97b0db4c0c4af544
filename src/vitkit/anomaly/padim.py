"""PaDiM: one Gaussian per feature-map position, scored by Mahalanobis distance.

Defard et al. 2020, "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization". The backbone is not here: inputs are feature maps ``(B, C_i, h_i, w_i)`` already
extracted, largest grid first.

The fit streams: :class:`GaussianAccumulator` keeps per-position sums and sums of outer products
in float64, so hundreds of training images never need to be held at once. The covariance is
shrunk toward ``m I``, ``m`` the average per-channel variance of the whole fit (one target for
every position, like the paper's fixed ``0.01 I``), by a fixed amount or by the Oracle
Approximating Shrinkage (OAS) coefficient of each position; a small floor on the diagonal keeps
it invertible even for fewer images than channels or a set of identical images.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vitkit.anomaly.maps import check_feature_maps

# Ridge added to every covariance, relative to the average per-channel variance of the whole
# fit: negligible for real data, but it keeps a zero-variance position (identical images, a
# constant border) invertible with a finite, data-scaled precision.
_RELATIVE_FLOOR = 1e-6
# Default shrinkage toward m I. Measured on DeepPCB (efficientnet_lite0, 224 px, image / pixel
# AUROC): 0.01 -> 0.949 / 0.909, 0 -> 0.965 / 0.892, 0.1 -> 0.952 / 0.920, OAS -> 0.939 / 0.898;
# a target per position (its own trace / C) instead of the fit's m fell to 0.864 / 0.765 at
# 0.001 and 0.798 / 0.707 with OAS, because positions of low variance (the borders) then get
# almost no ridge and their noise decides the image score.
DEFAULT_SHRINKAGE = 0.01
# Used only when even the raw second moment is zero (all-zero embeddings).
_ABSOLUTE_FLOOR = 1e-12
# Positions per chunk when finalising, so that temporary (chunk, C, C) float64 copies stay small.
_FINALIZE_CHUNK = 256


class PadimModel(NamedTuple):
    """A fitted PaDiM model.

    Attributes:
        mean: Per-position mean embedding, ``(P, C)`` float32 with ``P = h * w``.
        inv_cov: Per-position inverse (shrunk) covariance, ``(P, C, C)`` float32.
        grid: The ``(h, w)`` feature grid the positions are laid on (row-major).
    """

    mean: torch.Tensor
    inv_cov: torch.Tensor
    grid: tuple[int, int]


def concat_aligned(feature_maps: list[torch.Tensor]) -> torch.Tensor:
    """Aligns every map on the first map's grid (nearest neighbour) and stacks the channels.

    Nearest-neighbour upsampling is what the paper does: each deeper cell is copied to the
    finer cells it covers.

    Args:
        feature_maps: Maps ``(B, C_i, h_i, w_i)``, the first one on the grid to align to.

    Returns:
        ``(B, sum C_i, h_0, w_0)``.

    Raises:
        ValueError: If the list is empty, a map is not 4-D or the batch sizes differ.
    """
    check_feature_maps(feature_maps)
    height, width = feature_maps[0].shape[-2:]
    aligned = [
        fmap if fmap.shape[-2:] == (height, width)
        else F.interpolate(fmap, size=(height, width), mode="nearest")
        for fmap in feature_maps
    ]
    return torch.cat(aligned, dim=1)


def random_channels(total: int, keep: int, seed: int) -> torch.Tensor:
    """A seeded random subset of channel indices, as PaDiM reduces its embedding.

    Args:
        total: Number of channels available.
        keep: Number of channels to keep; ``keep >= total`` keeps them all.
        seed: Seed of the draw, so that fit and inference pick the same channels.

    Returns:
        Sorted ``(min(keep, total),)`` int64 indices into ``range(total)``.

    Raises:
        ValueError: If ``total`` or ``keep`` is not positive.
    """
    if total < 1 or keep < 1:
        raise ValueError(f"random_channels needs total >= 1 and keep >= 1, got total={total}, "
                         f"keep={keep}")
    if keep >= total:
        return torch.arange(total, dtype=torch.long)
    generator = torch.Generator().manual_seed(int(seed))
    chosen = torch.randperm(total, generator=generator)[:keep]
    return torch.sort(chosen).values


class GaussianAccumulator:
    """Streaming per-position mean and covariance of embeddings ``(B, C, h, w)``.

    Sums are kept in float64 around a shift (the first batch's mean) so that the final
    ``E[x x^T] - mean mean^T`` does not lose precision when features have a large mean and a
    small spread. Memory is ``positions * channels**2 * 8`` bytes (100 channels on a 56x56
    grid: 250 MB).

    Args:
        channels: Embedding channels ``C``.
        positions: Grid positions ``P = h * w``.
    """

    def __init__(self, channels: int, positions: int) -> None:
        if channels < 1 or positions < 1:
            raise ValueError(f"GaussianAccumulator needs channels >= 1 and positions >= 1, got "
                             f"channels={channels}, positions={positions}")
        self.channels = channels
        self.positions = positions
        self._count = 0
        self._grid: tuple[int, int] | None = None
        self._shift = torch.zeros(positions, channels, dtype=torch.float64)
        self._sum = torch.zeros(positions, channels, dtype=torch.float64)
        self._outer = torch.zeros(positions, channels, channels, dtype=torch.float64)

    @property
    def count(self) -> int:
        """Number of images accumulated so far."""
        return self._count

    def update(self, embeddings: torch.Tensor) -> None:
        """Adds a batch of embeddings.

        Args:
            embeddings: ``(B, C, h, w)`` with ``C == channels`` and ``h * w == positions``; the
                grid must be the same for every batch.

        Raises:
            ValueError: On a shape that does not match the accumulator or earlier batches.
        """
        self._check_batch(embeddings)
        if embeddings.shape[0] == 0:
            return
        # (P, B, C): one small matrix per position, so the outer products are one bmm.
        samples = _per_position(embeddings).to(torch.float64)
        if self._count == 0:
            self._shift = samples.mean(dim=1)
        centred = samples - self._shift.unsqueeze(1)
        self._sum += centred.sum(dim=1)
        self._outer += torch.bmm(centred.transpose(1, 2), centred)
        self._count += embeddings.shape[0]

    def finalize(self, shrinkage: float | None = DEFAULT_SHRINKAGE) -> PadimModel:
        """Mean and inverse shrunk covariance per position.

        The covariance is ``(1 - a) S + (a * m + floor) I`` with ``S`` the maximum-likelihood
        covariance and ``m`` the fit's average per-channel variance. ``a`` is ``shrinkage``
        when given, else the OAS coefficient of each position (Chen et al. 2010, eq. 23).
        OAS rather than Ledoit-Wolf: it needs only ``S`` and the count, which the streamed
        sums give exactly, whereas Ledoit-Wolf needs fourth moments of every sample; and it is
        derived for Gaussian data, which is PaDiM's own model, where it beats Ledoit-Wolf for
        few samples.

        Args:
            shrinkage: Fixed shrinkage in ``[0, 1]``, or ``None`` for OAS per position.

        Returns:
            The fitted :class:`PadimModel`.

        Raises:
            ValueError: If nothing was accumulated or ``shrinkage`` is outside ``[0, 1]``.
        """
        if self._count == 0 or self._grid is None:
            raise ValueError("GaussianAccumulator.finalize() called before any update(); add "
                             "at least one batch of embeddings first.")
        if shrinkage is not None and not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1] or None (automatic OAS), got "
                             f"{shrinkage}")
        mean_offset = self._sum / self._count
        target = self._average_variance(mean_offset)
        floor = max(_RELATIVE_FLOOR * target, _ABSOLUTE_FLOOR)
        inv_cov = torch.empty(self.positions, self.channels, self.channels, dtype=torch.float32)
        for start in range(0, self.positions, _FINALIZE_CHUNK):
            chunk = slice(start, start + _FINALIZE_CHUNK)
            covariance = self._covariance(chunk, mean_offset[chunk])
            regularised = _shrink(covariance, self._count, shrinkage, target, floor)
            inv_cov[chunk] = _spd_inverse(regularised).to(torch.float32)
        mean = (self._shift + mean_offset).to(torch.float32)
        return PadimModel(mean=mean, inv_cov=inv_cov, grid=self._grid)

    def _covariance(self, chunk: slice, mean_offset: torch.Tensor) -> torch.Tensor:
        second_moment = self._outer[chunk] / self._count
        covariance = second_moment - mean_offset.unsqueeze(2) * mean_offset.unsqueeze(1)
        return 0.5 * (covariance + covariance.transpose(1, 2))

    def _average_variance(self, mean_offset: torch.Tensor) -> float:
        """The fit's average per-channel variance (the raw second moment when every variance
        is zero, so that identical images still get a data-scaled ridge)."""
        second_moment = torch.diagonal(self._outer, dim1=1, dim2=2) / self._count
        variance = (second_moment - mean_offset**2).clamp_min(0.0)
        scale = float(variance.mean())
        if scale <= 0.0:
            raw = (self._shift + mean_offset) ** 2
            scale = float(raw.mean())
        return scale

    def _check_batch(self, embeddings: torch.Tensor) -> None:
        if embeddings.dim() != 4:
            raise ValueError(f"embeddings must be (B, C, h, w), got shape "
                             f"{tuple(embeddings.shape)}")
        _, channels, height, width = embeddings.shape
        if channels != self.channels or height * width != self.positions:
            raise ValueError(
                f"embeddings of shape {tuple(embeddings.shape)} do not match the accumulator "
                f"(channels={self.channels}, positions={self.positions}); create it with "
                f"GaussianAccumulator({channels}, {height * width}).")
        if self._grid is not None and (height, width) != self._grid:
            raise ValueError(f"embeddings grid {(height, width)} differs from the earlier "
                             f"batches' {self._grid}; resize every image the same way.")
        self._grid = (height, width)


def fit_padim(embeddings: torch.Tensor, shrinkage: float | None = DEFAULT_SHRINKAGE,
              batch_size: int = 32) -> PadimModel:
    """Fits PaDiM on embeddings held in memory (a convenience over the accumulator).

    Args:
        embeddings: ``(N, C, h, w)`` training embeddings.
        shrinkage: Fixed shrinkage in ``[0, 1]`` or ``None`` for OAS per position (see
            :meth:`GaussianAccumulator.finalize`).
        batch_size: Images per accumulator update (bounds the float64 temporaries).

    Returns:
        The fitted :class:`PadimModel`.

    Raises:
        ValueError: If ``embeddings`` is not 4-D or is empty.
    """
    if embeddings.dim() != 4 or embeddings.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty (N, C, h, w) tensor, got shape "
                         f"{tuple(embeddings.shape)}")
    n_images, channels, height, width = embeddings.shape
    accumulator = GaussianAccumulator(channels, height * width)
    for start in range(0, n_images, max(1, batch_size)):
        accumulator.update(embeddings[start:start + max(1, batch_size)])
    return accumulator.finalize(shrinkage)


def padim_distance_map(embeddings: torch.Tensor, model: PadimModel,
                       chunk_size: int = 512) -> torch.Tensor:
    """Mahalanobis distance of every position's embedding to its Gaussian.

    ``sqrt((x - mean)^T inv_cov (x - mean))`` written as batched matmuls (no ``torch.cdist``,
    which does not export), a chunk of positions at a time to bound memory.

    Args:
        embeddings: ``(B, C, h, w)`` embeddings on the model's grid and channels.
        model: A fitted :class:`PadimModel`.
        chunk_size: Positions per chunk.

    Returns:
        ``(B, h, w)`` float32 distances.

    Raises:
        ValueError: If the shape does not match the model.
    """
    positions, channels = model.mean.shape
    if embeddings.dim() != 4 or embeddings.shape[1] != channels or \
            tuple(embeddings.shape[-2:]) != tuple(model.grid):
        raise ValueError(
            f"embeddings must be (B, {channels}, {model.grid[0]}, {model.grid[1]}) to match the "
            f"model, got {tuple(embeddings.shape)}; use the same layers, channel subset and "
            f"image size as for the fit.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch = embeddings.shape[0]
    samples = _per_position(embeddings.to(torch.float32))  # (P, B, C)
    squared = []
    for start in range(0, positions, chunk_size):
        chunk = slice(start, start + chunk_size)
        delta = samples[chunk] - model.mean[chunk].unsqueeze(1)  # (p, B, C)
        weighted = torch.matmul(delta, model.inv_cov[chunk])
        squared.append((weighted * delta).sum(dim=2))  # (p, B)
    distances = torch.cat(squared, dim=0).clamp_min(0.0).sqrt()
    return distances.transpose(0, 1).reshape(batch, *model.grid)


def _per_position(embeddings: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w) -> (h * w, B, C)``."""
    batch, channels = embeddings.shape[:2]
    return embeddings.reshape(batch, channels, -1).permute(2, 0, 1)


def _shrink(covariance: torch.Tensor, count: int, shrinkage: float | None, target: float,
            floor: float) -> torch.Tensor:
    """``(1 - a) S + (a * target + floor) I`` per position."""
    channels = covariance.shape[-1]
    if shrinkage is None:
        amount = oas_shrinkage(covariance, count)
    else:
        amount = torch.full(covariance.shape[:1], float(shrinkage), dtype=covariance.dtype)
    eye = torch.eye(channels, dtype=covariance.dtype)
    diagonal = (amount * target + floor)[:, None, None] * eye
    return (1.0 - amount)[:, None, None] * covariance + diagonal


def oas_shrinkage(covariance: torch.Tensor, count: int) -> torch.Tensor:
    """The Oracle Approximating Shrinkage coefficient of each covariance (Chen et al. 2010,
    eq. 23), vectorised over positions.

    Args:
        covariance: ``(P, C, C)`` maximum-likelihood covariances (divided by ``count``).
        count: Number of samples they were estimated from.

    Returns:
        ``(P,)`` coefficients in ``[0, 1]``; 1 where the formula is undefined (zero spread).
    """
    channels = covariance.shape[-1]
    trace = torch.diagonal(covariance, dim1=1, dim2=2).sum(dim=1)
    trace_of_square = (covariance * covariance).sum(dim=(1, 2))  # tr(S^2), S symmetric
    numerator = (1.0 - 2.0 / channels) * trace_of_square + trace**2
    denominator = (count + 1.0 - 2.0 / channels) * (trace_of_square - trace**2 / channels)
    safe = denominator > 0
    ratio = numerator / torch.where(safe, denominator, torch.ones_like(denominator))
    return torch.where(safe, ratio.clamp(0.0, 1.0), torch.ones_like(ratio))


def _spd_inverse(matrices: torch.Tensor) -> torch.Tensor:
    """Inverse of symmetric positive-definite matrices through their Cholesky factors."""
    factors = torch.linalg.cholesky(matrices)
    return torch.cholesky_inverse(factors)
