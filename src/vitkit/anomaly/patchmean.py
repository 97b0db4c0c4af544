"""Patch-mean: the light anomaly baseline for uniform backgrounds with tiny dots or lines.

Learned from normal images only. Each canvas (B, C, H, W) is cut into P x P patches; every
patch gets S = 4 C statistics (per channel: mean, std, max, min). Over the normal set each
(statistic, patch position) gets a Gaussian: a mean and a variance, the variance shrunk toward
the statistic's pooled variance over all positions and floored. A patch scores the largest |z|
over its statistics and an image scores its **most anomalous patch**.

Why the max over patches and not the sum: a 3-pixel dot changes one patch out of thousands, so
its z-score drowns in the summed noise of all the others; the max keeps it. Why std, max and
min beside the mean: on a dark canvas (level 20-40, pixel noise 7) a white 3-pixel dot moves an
8 x 8 patch mean by about 10 grey levels, no more than the image-to-image change of background
level, but it moves the patch max from about 50 to 255 and the patch std from about 7 to about
48.

Pure torch: tensors in, tensors out; fitting also streams through :class:`PatchStatsAccumulator`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# Measured on 1024 x 768 canvases (level 20-40, noise 7, 40 normal images, threshold at the
# 99th percentile of 100 held-out normals): of 160 faint defects (3-pixel dots of grey 60-80,
# 1-pixel scratches of grey 50-60, 3-pixel dim blue dots) 8 px patches flagged 154, 16 px 145,
# 32 px 117; every setting flagged all the white 3-pixel dots.
DEFAULT_PATCH_SIZE = 8
STATISTICS = ("mean", "std", "max", "min")
# Only keeps z finite where no normal image varied at all (identical images); a std of 1e-4 is
# a fortieth of a grey level, below the smallest real spread measured (the patch std's own
# spread across images, ~0.5 grey levels at 8 px), so it never masks a statistic. A floor of
# one grey level, by contrast, hid most faint scratches and dim blue dots.
DEFAULT_VAR_FLOOR = 1e-8
# Weight of the pooled variance in each position's variance (0 = per position, 1 = pooled).
# 0.5 bounds the cost where positions truly differ: a position keeps at least half its own
# variance, so its z is inflated by at most sqrt(2).
DEFAULT_SHRINKAGE = 0.5


class PatchMeanModel(NamedTuple):
    """Per-position Gaussian of the patch statistics.

    Attributes:
        mean: (S, gh, gw) mean of each statistic at each patch position.
        std: (S, gh, gw) standard deviation after shrinkage and floor (always > 0).
        patch_size: P, the patch side in working pixels.
    """

    mean: torch.Tensor
    std: torch.Tensor
    patch_size: int


def statistic_names(channels: int) -> list[str]:
    """Names of the S = 4 * channels statistics in the order of :func:`patch_statistics`."""
    return [f"c{c}_{name}" for c in range(channels) for name in STATISTICS]


def patch_statistics(canvases: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per-patch mean, std (population), max and min of every channel.

    Args:
        canvases: (B, C, H, W) with H and W multiples of ``patch_size``.
        patch_size: P.

    Returns:
        (B, 4 C, H / P, W / P); statistic ``4 c + k`` is ``STATISTICS[k]`` of channel ``c``.
    """
    if canvases.ndim != 4:
        raise ValueError(
            f"canvases must be (B, C, H, W), got shape {tuple(canvases.shape)}; "
            "add a batch dimension with canvases.unsqueeze(0)"
        )
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
    batch, channels, height, width = canvases.shape
    if height % patch_size or width % patch_size or height == 0 or width == 0:
        raise ValueError(
            f"canvas (H, W)=({height}, {width}) is not a multiple of patch_size={patch_size}; "
            "resize to gray.working_size(...) first so no border is dropped"
        )
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = canvases.reshape(batch, channels, grid_h, patch_size, grid_w, patch_size)
    dims = (3, 5)
    stats = torch.stack(
        [
            patches.mean(dim=dims),
            patches.std(dim=dims, correction=0),
            patches.amax(dim=dims),
            patches.amin(dim=dims),
        ],
        dim=2,
    )  # (B, C, 4, gh, gw)
    return stats.reshape(batch, channels * len(STATISTICS), grid_h, grid_w)


class PatchStatsAccumulator:
    """Streams per-position means and variances of patch statistics, batch by batch.

    Merges batch moments with Chan's parallel update in float64, so fitting 500 canvases of
    1024 x 768 never needs more than one batch of canvases in memory.
    """

    def __init__(self, patch_size: int) -> None:
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
        self.patch_size = patch_size
        self.count = 0
        self._mean: torch.Tensor | None = None  # (S, gh, gw) float64
        self._m2: torch.Tensor | None = None  # (S, gh, gw) float64, sum of squared deviations

    def update(self, stats: torch.Tensor) -> None:
        """Adds a batch of statistics (B, S, gh, gw) from :func:`patch_statistics`."""
        if stats.ndim != 4 or stats.shape[0] == 0:
            raise ValueError(
                f"stats must be a non-empty (B, S, gh, gw) batch, got shape {tuple(stats.shape)}"
            )
        if self._mean is not None and stats.shape[1:] != self._mean.shape:
            raise ValueError(
                f"stats of shape {tuple(stats.shape[1:])} per image do not match the "
                f"{tuple(self._mean.shape)} seen before; resize every image to one working size"
            )
        batch = stats.to(torch.float64)
        n_b = batch.shape[0]
        mean_b = batch.mean(dim=0)
        m2_b = ((batch - mean_b) ** 2).sum(dim=0)
        if self._mean is None or self._m2 is None:
            self._mean, self._m2, self.count = mean_b, m2_b, n_b
            return
        total = self.count + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / total)
        self._m2 = self._m2 + m2_b + delta**2 * (self.count * n_b / total)
        self.count = total

    def finalize(
        self, var_floor: float = DEFAULT_VAR_FLOOR, shrinkage: float = DEFAULT_SHRINKAGE
    ) -> PatchMeanModel:
        """The fitted model; see :func:`fit_patchmean` for ``var_floor`` and ``shrinkage``."""
        if self._mean is None or self._m2 is None or self.count < 2:
            raise ValueError(
                f"patch-mean needs at least 2 normal images to estimate a variance, got "
                f"{self.count}"
            )
        check_fit_arguments(var_floor, shrinkage)
        variance = self._m2 / (self.count - 1)  # (S, gh, gw), unbiased
        pooled = variance.mean(dim=(1, 2), keepdim=True)  # (S, 1, 1)
        shrunk = (1.0 - shrinkage) * variance + shrinkage * pooled
        std = shrunk.clamp_min(var_floor).sqrt()
        return PatchMeanModel(self._mean.float(), std.float(), self.patch_size)


def check_fit_arguments(var_floor: float, shrinkage: float) -> None:
    """Raises ValueError unless ``var_floor`` > 0 and 0 <= ``shrinkage`` <= 1."""
    if not var_floor > 0:
        raise ValueError(f"var_floor must be > 0 to keep z finite, got {var_floor}")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")


def fit_patchmean(
    stats: torch.Tensor,
    patch_size: int,
    var_floor: float = DEFAULT_VAR_FLOOR,
    shrinkage: float = DEFAULT_SHRINKAGE,
) -> PatchMeanModel:
    """Fits the per-position Gaussian of patch statistics of normal images.

    Each position's variance v is replaced by ``(1 - shrinkage) * v + shrinkage * pooled``,
    where ``pooled`` is the statistic's mean variance over all positions, then floored at
    ``var_floor``. With a few dozen images the per-position variances are noisy and the
    max over thousands of patches would otherwise be decided by the worst-estimated ones, and
    positions that never vary (pixels clipped to black in every normal image) would get the
    floor and explode on the first grey level. Measured with 40 normal 1024 x 768 canvases:
    0.5 flagged 154 of 160 faint defects against 142 per position (0.0); with a noisy,
    partly clipped region in every image 0.0 missed all 100 defects (threshold z = 549), 0.5
    flagged 35 and 1.0 (fully pooled, blind to the noisy region) only 3.

    Args:
        stats: (N, S, gh, gw) statistics of N >= 2 normal images.
        patch_size: P the statistics were computed with (kept in the model).
        var_floor: Smallest variance, in squared canvas units.
        shrinkage: Weight of the pooled variance, in [0, 1].

    Returns:
        The fitted :class:`PatchMeanModel`.
    """
    if stats.ndim != 4:
        raise ValueError(f"stats must be (N, S, gh, gw), got shape {tuple(stats.shape)}")
    if stats.shape[0] < 2:
        raise ValueError(
            f"patch-mean needs at least 2 normal images to estimate a variance, got "
            f"{stats.shape[0]}"
        )
    accumulator = PatchStatsAccumulator(patch_size)
    accumulator.update(stats)
    return accumulator.finalize(var_floor, shrinkage)


def patchmean_zmap(stats: torch.Tensor, model: PatchMeanModel) -> torch.Tensor:
    """Per-patch anomaly score: the largest |z| over the S statistics.

    Two-sided because a defect can brighten or darken a patch and raise or lower its spread.

    Args:
        stats: (B, S, gh, gw) from :func:`patch_statistics` at the model's patch size.
        model: From :func:`fit_patchmean`.

    Returns:
        (B, gh, gw) non-negative scores.
    """
    if stats.ndim != 4 or stats.shape[1:] != model.mean.shape:
        raise ValueError(
            f"stats must be (B, {', '.join(map(str, model.mean.shape))}) like the fitted model, "
            f"got {tuple(stats.shape)}; compute them at the model's working size and patch size"
        )
    z = (stats.to(model.mean.dtype) - model.mean) / model.std  # (B, S, gh, gw)
    return z.abs().amax(dim=1)


def image_scores(zmap: torch.Tensor) -> torch.Tensor:
    """An image's score: its most anomalous patch, ``zmap`` (B, gh, gw) -> (B,)."""
    if zmap.ndim != 3:
        raise ValueError(
            f"zmap must be (B, gh, gw), got shape {tuple(zmap.shape)}; "
            "add a batch dimension with zmap.unsqueeze(0)"
        )
    return zmap.amax(dim=(1, 2))
