"""Pixel-level anomaly metrics: pixel AUROC and the MVTec AU-PRO, in bounded memory.

A pixel counts as flagged iff ``score >= threshold``. The metrics never concatenate or sort
all pixels: hundreds of 1024 x 1024 maps would need gigabytes. Each map is binned on its own
into a fixed-size histogram of scores, so memory is one map plus ``O(n_bins)``. Binning only
mixes up pixels that share a bin; the functions know exactly how much that can change the
result, and the private ``*_with_bound`` variants return that bound (the tests check it
against the exact values). Image-level metrics are in :mod:`vitkit.anomaly.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

PIXEL_AUROC_BINS = 1 << 16
"""Histogram bins over the whole score range for the pixel AUROC."""
PRO_STEPS = 1 << 12
"""Thresholds for the PRO curve, spread over the scores where FPR <= fpr_limit."""
# Ground-truth regions are 8-connected, as in the MVTec AD evaluation.
_REGION_STRUCTURE = np.ones((3, 3), dtype=bool)


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                n_bins: int = PIXEL_AUROC_BINS) -> float | None:
    """Pixel-level AUROC over all pixels of all images, from a fixed-bin histogram.

    Scores are binned into ``n_bins`` equal-width bins between the global minimum and
    maximum; pixels in one bin count as ties (half a correctly ordered pair). The result
    differs from the exact AUROC by at most ``0.5 * sum_b pos_b * neg_b / (P * N)``; with
    the default bins this was below 1e-4 on smoothed anomaly maps in the tests.

    Args:
        maps: Anomaly maps ``(H_i, W_i)``; sizes may differ between images.
        masks: Bool masks of the same sizes, ``True`` = defect pixel; ``None`` = no defect.
        n_bins: Histogram resolution.

    Returns:
        The AUROC, or ``None`` unless there are both defect and normal pixels.

    Raises:
        ValueError: If lengths or shapes disagree, or a map holds NaN/inf.
    """
    result = _pixel_auroc_with_bound(maps, masks, n_bins)
    return None if result is None else result[0]


def pro_score(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
              fpr_limit: float = 0.3, steps: int = PRO_STEPS) -> float | None:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised (MVTec AU-PRO).

    For a threshold ``t``, each 8-connected ground-truth region has an overlap (its share of
    pixels with score ``>= t``); PRO(t) is the mean over all regions of all images, and
    FPR(t) the share of defect-free pixels (of every image) with score ``>= t``. The curve
    from (0, 0) to (1, 1) is integrated with the trapezoid rule over FPR in
    ``[0, fpr_limit]`` and divided by ``fpr_limit``: a perfect map scores 1, a random one
    about ``fpr_limit / 2``.

    The ``steps`` thresholds are equally spaced between the score where FPR reaches
    ``fpr_limit`` (found from a first histogram of normal pixels) and the largest normal
    score, plus one just above it; the integral is exact up to the mixing of pixels within a
    step, at most ``sum_k dFPR_k * dPRO_k / fpr_limit``.

    Args:
        maps: Anomaly maps ``(H_i, W_i)``; sizes may differ between images.
        masks: Bool masks of the same sizes, ``True`` = defect pixel; ``None`` = no defect.
        fpr_limit: Upper end of the FPR integration range, in ``(0, 1]``.
        steps: Number of thresholds in that range.

    Returns:
        The normalised AU-PRO, or ``None`` unless there are defect regions and normal pixels.

    Raises:
        ValueError: If lengths or shapes disagree, a map holds NaN/inf, or an argument is
            out of range.
    """
    result = _pro_with_bound(maps, masks, fpr_limit, steps)
    return None if result is None else result[0]


def _pixel_auroc_with_bound(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                            n_bins: int = PIXEL_AUROC_BINS) -> tuple[float, float] | None:
    """:func:`pixel_auroc` and the bound on its distance to the exact value."""
    pairs = _check_pixel_inputs(maps, masks)
    n_bins = _check_count(n_bins, "n_bins")
    lo = min(float(m.min()) for m, _ in pairs)
    hi = max(float(m.max()) for m, _ in pairs)
    pos = np.zeros(n_bins + 2)
    neg = np.zeros(n_bins + 2)
    for amap, mask in pairs:
        bins = _bin_indices(amap, lo, hi, n_bins)
        if mask is None:
            neg += np.bincount(bins.ravel(), minlength=n_bins + 2)
        else:
            pos += np.bincount(bins[mask], minlength=n_bins + 2)
            neg += np.bincount(bins[~mask], minlength=n_bins + 2)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    pos_above = np.cumsum(pos[::-1])[::-1] - pos  # defect pixels in strictly higher bins
    auroc = float(np.sum(neg * (pos_above + 0.5 * pos)) / (n_pos * n_neg))
    bound = float(0.5 * np.sum(pos * neg) / (n_pos * n_neg))
    return auroc, bound


def _pro_with_bound(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                    fpr_limit: float = 0.3,
                    steps: int = PRO_STEPS) -> tuple[float, float] | None:
    """:func:`pro_score` and the bound on its distance to the exact (sorted-scores) value."""
    pairs = _check_pixel_inputs(maps, masks)
    steps = _check_count(steps, "steps")
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}; MVTec uses 0.3")
    normal_range = _normal_pixel_range(pairs)
    if normal_range is None:
        return None
    lo = _fpr_limit_score(pairs, *normal_range, steps, fpr_limit)
    hi = normal_range[1]
    # Bins: 0 = below lo, 1..steps = [lo, hi], steps + 1 = above every normal pixel.
    normal_hist = np.zeros(steps + 2)
    overlap_hist = np.zeros(steps + 2)  # sum over regions of (share of region in the bin)
    n_regions = 0
    for amap, mask in pairs:
        bins = _bin_indices(amap, lo, hi, steps)
        if mask is None:
            normal_hist += np.bincount(bins.ravel(), minlength=steps + 2)
            continue
        normal_hist += np.bincount(bins[~mask], minlength=steps + 2)
        regions, count = ndimage.label(mask, structure=_REGION_STRUCTURE)
        if count == 0:
            continue
        region_of_pixel = regions[mask]
        sizes = np.bincount(region_of_pixel)
        overlap_hist += np.bincount(bins[mask], weights=1.0 / sizes[region_of_pixel],
                                    minlength=steps + 2)
        n_regions += count
    if n_regions == 0:
        return None
    # Threshold k (k = 0 .. steps) flags bins k+1 and above; k = steps is "above all normals".
    fpr = np.cumsum(normal_hist[::-1])[::-1][1:] / normal_hist.sum()
    pro = np.cumsum(overlap_hist[::-1])[::-1][1:] / n_regions
    # Increasing FPR, from (0, 0) (threshold above every score) to (1, 1) (below every score).
    fpr = np.clip(np.r_[0.0, fpr[::-1], 1.0], 0.0, 1.0)
    pro = np.clip(np.r_[0.0, pro[::-1], 1.0], 0.0, 1.0)
    return _area_up_to(fpr, pro, fpr_limit)


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> tuple[float, float]:
    """Trapezoid area under a monotone curve for ``x`` in ``[0, limit]``, divided by ``limit``.

    ``x`` runs from 0 to 1 and ``y`` is non-decreasing in ``x``. Also returns the largest
    error any monotone curve through these points could cause, divided by ``limit``.
    """
    end = int(np.searchsorted(x, limit, side="right"))  # first point beyond the limit
    xs, ys = x[:end], y[:end]
    if end < x.size and xs[-1] < limit:
        y_limit = ys[-1] + (y[end] - ys[-1]) * (limit - xs[-1]) / (x[end] - xs[-1])
        xs, ys = np.r_[xs, limit], np.r_[ys, y_limit]
        # The last piece is cut: the true curve may sit anywhere up to y[end] above it.
        dy = np.r_[np.diff(ys)[:-1] / 2.0, y[end] - ys[-2]]
    else:
        dy = np.diff(ys) / 2.0
    dx = np.diff(xs)
    area = float(np.sum(dx * (ys[1:] + ys[:-1]) / 2.0))
    return area / limit, float(np.sum(dx * dy)) / limit


def _normal_pixel_range(pairs: list[tuple[np.ndarray, np.ndarray | None]]
                        ) -> tuple[float, float] | None:
    """Smallest and largest score of defect-free pixels, or ``None`` if there are none."""
    lows, highs = [], []
    for amap, mask in pairs:
        values = amap if mask is None else amap[~mask]
        if values.size:
            lows.append(float(values.min()))
            highs.append(float(values.max()))
    return (min(lows), max(highs)) if lows else None


def _fpr_limit_score(pairs: list[tuple[np.ndarray, np.ndarray | None]], lo: float, hi: float,
                     n_bins: int, fpr_limit: float) -> float:
    """A score at or below the one where FPR falls to ``fpr_limit`` (coarse histogram)."""
    hist = np.zeros(n_bins + 2)
    for amap, mask in pairs:
        values = amap if mask is None else amap[~mask]
        hist += np.bincount(_bin_indices(values, lo, hi, n_bins).ravel(), minlength=n_bins + 2)
    # fpr_at_edge[k]: share of normal pixels >= the lower edge of bin k + 1.
    fpr_at_edge = np.cumsum(hist[::-1])[::-1][1 : n_bins + 1] / hist.sum()
    k = int(np.flatnonzero(fpr_at_edge >= fpr_limit)[-1])  # edge 0 (the minimum) has FPR 1
    return lo + k * (hi - lo) / n_bins if hi > lo else lo


def _bin_indices(values: np.ndarray, lo: float, hi: float, n_bins: int) -> np.ndarray:
    """Bin of each value: 0 below ``lo``, ``1..n_bins`` equal widths on ``[lo, hi]``,
    ``n_bins + 1`` above ``hi``. With ``hi == lo`` every value equal to ``lo`` is in bin 1."""
    if hi > lo:
        position = np.subtract(values, lo, dtype=np.float64)
        position *= n_bins / (hi - lo)
        np.floor(position, out=position)
        # hi itself would land on n_bins: keep it in the last bin; below lo becomes -1.
        np.clip(position, -1, n_bins - 1, out=position)
    else:
        position = np.where(values < lo, -1.0, 0.0)
    bins = position.astype(np.int64)
    bins += 1
    bins[values > hi] = n_bins + 1
    return bins


def _check_pixel_inputs(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]
                        ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Pair maps with bool masks (``None`` kept: no defect pixels), validating shapes/values."""
    if len(maps) != len(masks):
        raise ValueError(f"need one mask per map, got {len(maps)} maps and {len(masks)} masks")
    if len(maps) == 0:
        raise ValueError("maps is empty: need at least one map to compute pixel metrics")
    pairs: list[tuple[np.ndarray, np.ndarray | None]] = []
    for i, (amap, mask) in enumerate(zip(maps, masks, strict=True)):
        m = _to_numpy(amap)
        if m.ndim != 2 or m.size == 0:
            raise ValueError(f"map {i} must have shape (H, W) with H, W >= 1, got {m.shape}")
        if not np.issubdtype(m.dtype, np.number) or m.dtype == bool:
            raise ValueError(f"map {i} must hold real numbers, got dtype {m.dtype}")
        if not np.isfinite(m).all():
            raise ValueError(f"map {i} contains NaN or infinite values")
        if mask is None:
            pairs.append((m, None))
            continue
        k = _to_numpy(mask)
        if k.shape != m.shape:
            raise ValueError(f"mask {i} has shape {k.shape} but its map has {m.shape}; "
                             "upsample the maps to the image size (maps.upsample_map)")
        if k.dtype != bool:
            if not np.isin(k, (0, 1)).all():
                raise ValueError(f"mask {i} must be bool or 0/1, got values "
                                 f"{np.unique(k)[:5].tolist()}; binarise it first")
            k = k.astype(bool)
        pairs.append((m, k))
    return pairs


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor, possibly on a GPU
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)
