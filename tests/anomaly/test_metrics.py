"""Tests for vitkit.anomaly.metrics, against hand-worked values and exact references."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from vitkit.anomaly.maps import upsample_map
from vitkit.anomaly.metrics import (
    evaluate_anomaly,
    image_metrics,
    per_defect_metrics,
)
from vitkit.anomaly.pixel_metrics import (
    _pixel_auroc_with_bound,
    _pro_with_bound,
    pixel_auroc,
    pro_score,
)
from vitkit.anomaly.threshold import f1_optimal_threshold

# ----------------------------------------------------------------------------- image level

# Sorted by score: 0.8 (A), 0.4 (N), 0.35 (A), 0.1 (N).
# AUROC: of the 4 (anomaly, normal) pairs only (0.35, 0.4) is misordered -> 3/4.
# AP: precision 1 at recall 1/2, precision 2/3 at recall 1 -> 0.5 * 1 + 0.5 * 2/3 = 5/6.
# At threshold 0.35 (>= flags it): flagged {0.8, 0.4, 0.35}: TP 2, FP 1, FN 0.
SCORES = [0.1, 0.4, 0.35, 0.8]
LABELS = [0, 0, 1, 1]


def test_image_metrics_by_hand() -> None:
    m = image_metrics(SCORES, LABELS, threshold=0.35)
    assert m.auroc == pytest.approx(0.75)
    assert m.ap == pytest.approx(5 / 6)
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == 1.0
    assert m.f1 == pytest.approx(0.8)
    assert (m.n_normal, m.n_anomalous) == (2, 2)
    # Same numbers from scikit-learn.
    assert m.auroc == pytest.approx(roc_auc_score(LABELS, SCORES))
    assert m.ap == pytest.approx(average_precision_score(LABELS, SCORES))
    assert m.f1 == pytest.approx(f1_score(LABELS, np.array(SCORES) >= 0.35))


def test_image_metrics_threshold_just_above_a_score_unflags_it() -> None:
    m = image_metrics(SCORES, LABELS, threshold=0.36)  # flagged {0.8, 0.4}: TP 1, FP 1
    assert (m.precision, m.recall) == (0.5, 0.5)
    assert m.f1 == pytest.approx(0.5)


def test_image_metrics_with_one_class_reports_no_auroc() -> None:
    normal_only = image_metrics([0.1, 0.2, 0.9], [0, 0, 0], threshold=0.5)
    assert normal_only.auroc is None and normal_only.ap is None
    assert (normal_only.precision, normal_only.recall, normal_only.f1) == (0.0, 0.0, 0.0)
    assert (normal_only.n_normal, normal_only.n_anomalous) == (3, 0)
    anomalous_only = image_metrics([0.1, 0.9], [True, True], threshold=0.5)
    assert anomalous_only.auroc is None
    assert (anomalous_only.precision, anomalous_only.recall) == (1.0, 0.5)


def test_image_metrics_f1_agrees_with_f1_optimal_threshold() -> None:
    rng = np.random.default_rng(1)
    labels = rng.random(80) < 0.4
    scores = rng.normal(labels * 1.5, 1.0)
    threshold, best = f1_optimal_threshold(scores, labels)
    assert image_metrics(scores, labels, threshold).f1 == pytest.approx(best)


def test_image_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        image_metrics([0.1, 0.2], [0, 1, 1], 0.5)
    with pytest.raises(ValueError, match="NaN"):
        image_metrics([0.1, float("nan")], [0, 1], 0.5)
    with pytest.raises(ValueError, match="threshold"):
        image_metrics([0.1, 0.2], [0, 1], float("nan"))


# good: 0.1 0.2 0.3   scratch: 0.9 0.25   hole: 0.5      threshold 0.4
# scratch vs good: 0.9 beats 3 goods, 0.25 beats 2 -> AUROC 5/6; flagged 0.9 only -> F1 2/3.
# hole vs good: 1.0 everywhere.
TYPES = ["good", "good", "scratch", "good", "scratch", "hole"]
TYPE_SCORES = [0.1, 0.2, 0.9, 0.3, 0.25, 0.5]


def test_per_defect_metrics_by_hand() -> None:
    result = per_defect_metrics(TYPE_SCORES, TYPES, threshold=0.4)
    assert list(result) == ["hole", "scratch"]
    scratch, hole = result["scratch"], result["hole"]
    assert scratch.auroc == pytest.approx(5 / 6)
    assert scratch.f1 == pytest.approx(2 / 3)
    assert (scratch.n_normal, scratch.n_anomalous) == (3, 2)
    assert hole.auroc == 1.0 and hole.ap == 1.0 and hole.f1 == 1.0
    assert hole.n_anomalous == 1


def test_per_defect_metrics_custom_normal_type_and_length_check() -> None:
    result = per_defect_metrics([0.1, 0.9], ["ok", "crack"], 0.5, normal_type="ok")
    assert list(result) == ["crack"] and result["crack"].auroc == 1.0
    with pytest.raises(ValueError, match="one defect type per score"):
        per_defect_metrics([0.1, 0.9], ["good"], 0.5)


def test_evaluate_anomaly_without_masks_has_no_pixel_keys() -> None:
    evaluation = evaluate_anomaly(TYPE_SCORES, TYPES, threshold=0.4)
    data = json.loads(json.dumps(evaluation.to_dict()))
    assert list(data) == ["image_auroc", "image_ap", "f1", "per_defect", "threshold",
                          "n_normal", "n_anomalous"]
    # 3 anomalies: 0.9 beats 3, 0.25 beats 2, 0.5 beats 3 -> 8/9. Flagged: 0.9, 0.5 -> F1 4/5.
    assert data["image_auroc"] == pytest.approx(8 / 9)
    assert data["f1"] == pytest.approx(0.8)
    assert data["per_defect"]["scratch"] == {"image_auroc": pytest.approx(5 / 6),
                                             "image_ap": pytest.approx(
                                                 average_precision_score([0, 0, 0, 1, 1],
                                                                         [.1, .2, .3, .9, .25])),
                                             "f1": pytest.approx(2 / 3), "n": 2}
    assert (data["threshold"], data["n_normal"], data["n_anomalous"]) == (0.4, 3, 3)


def _blob_maps(n_images: int, size: int, seed: int) -> tuple[list[np.ndarray], list]:
    """Smooth noisy maps; odd images hold a rectangular defect that the map partly sees."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    grid = size // 8
    for i in range(n_images):
        patch = torch.from_numpy(rng.normal(size=(1, grid, grid)))
        mask = np.zeros((size, size), dtype=bool)
        if i % 2:
            y, x = rng.integers(2, size - size // 4, 2)
            mask[y : y + size // 6, x : x + size // 5] = True
            patch[0, y // 8 : (y + size // 6) // 8 + 1, x // 8 : (x + size // 5) // 8 + 1] += 2
        maps.append(upsample_map(patch, (size, size), sigma=3.0)[0].numpy())
        masks.append(mask if i % 2 else None)
    return maps, masks


def test_evaluate_anomaly_with_masks_adds_pixel_metrics() -> None:
    maps, masks = _blob_maps(6, 64, seed=0)
    types = ["good" if m is None else "dent" for m in masks]
    scores = [float(m.max()) for m in maps]
    evaluation = evaluate_anomaly(scores, types, threshold=1.0, maps=maps, masks=masks)
    data = evaluation.to_dict()
    assert list(data) == ["image_auroc", "image_ap", "f1", "pixel_auroc", "pro", "per_defect",
                          "threshold", "n_normal", "n_anomalous"]
    assert data["pixel_auroc"] == pytest.approx(pixel_auroc(maps, masks))
    assert data["pro"] == pytest.approx(pro_score(maps, masks))
    assert data["pixel_auroc"] > 0.8


def test_evaluate_anomaly_uses_only_images_with_masks() -> None:
    maps, masks = _blob_maps(6, 32, seed=2)
    types = ["good" if m is None else "dent" for m in masks]
    scores = [float(m.max()) for m in maps]
    # Image 5's mask file is missing: it drops out of the pixel metrics only.
    partial = list(masks)
    partial[5] = None
    evaluation = evaluate_anomaly(scores, types, 1.0, maps=maps, masks=partial)
    kept = [i for i in range(6) if i != 5]
    assert evaluation.pixel_auroc == pytest.approx(
        pixel_auroc([maps[i] for i in kept], [masks[i] for i in kept]))
    assert evaluation.n_anomalous == 3  # image metrics still use every image
    # No anomalous image has a mask: no pixel metrics at all.
    none = evaluate_anomaly(scores, types, 1.0, maps=maps, masks=[None] * 6)
    assert none.pixel_auroc is None and "pixel_auroc" not in none.to_dict()
    # Normal images may come with explicit all-false masks.
    explicit = [np.zeros((32, 32), bool) if m is None else m for m in masks]
    again = evaluate_anomaly(scores, types, 1.0, maps=maps, masks=explicit)
    assert again.pixel_auroc == pytest.approx(pixel_auroc(maps, masks))


def test_evaluate_anomaly_rejects_inconsistent_masks() -> None:
    maps, masks = _blob_maps(4, 32, seed=1)
    types = ["good", "dent", "good", "dent"]
    with pytest.raises(ValueError, match="without maps"):
        evaluate_anomaly([0.0] * 4, types, 1.0, masks=masks)
    with pytest.raises(ValueError, match="one map and one mask"):
        evaluate_anomaly([0.0] * 4, types, 1.0, maps=maps[:3], masks=masks)
    bad = list(masks)
    bad[0] = masks[1]
    with pytest.raises(ValueError, match="normal type 'good' but its mask"):
        evaluate_anomaly([0.0] * 4, types, 1.0, maps=maps, masks=bad)
    small = list(masks)
    small[1] = np.zeros((16, 16), bool)
    with pytest.raises(ValueError, match="upsample"):
        evaluate_anomaly([0.0] * 4, types, 1.0, maps=maps, masks=small)


# ----------------------------------------------------------------------------- pixel AUROC


def _flat(maps: list[np.ndarray], masks: list) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([m.ravel() for m in maps])
    labels = np.concatenate([(np.zeros(m.shape, bool) if k is None else k).ravel()
                             for m, k in zip(maps, masks, strict=True)])
    return scores, labels


def test_pixel_auroc_is_within_its_bound_of_the_exact_value() -> None:
    maps, masks = _blob_maps(8, 64, seed=0)
    # Different sizes are allowed.
    extra, extra_masks = _blob_maps(2, 48, seed=5)
    maps, masks = maps + extra, masks + extra_masks
    exact = roc_auc_score(*_flat(maps, masks)[::-1])
    approx, bound = _pixel_auroc_with_bound(maps, masks)
    assert abs(approx - exact) <= bound + 1e-12
    assert bound < 1e-4  # measured 8e-6 with the default 65536 bins
    coarse, coarse_bound = _pixel_auroc_with_bound(maps, masks, n_bins=64)
    assert abs(coarse - exact) <= coarse_bound + 1e-12
    assert coarse_bound > bound


def test_pixel_auroc_is_exact_on_discrete_maps_with_ties() -> None:
    rng = np.random.default_rng(4)
    maps = [rng.integers(0, 10, (20, 30)).astype(np.float32) for _ in range(3)]
    masks = [maps[0] + rng.integers(-3, 4, (20, 30)) > 6, None, maps[2] > 7]
    exact = roc_auc_score(*_flat(maps, masks)[::-1])
    assert pixel_auroc(maps, masks) == pytest.approx(exact, abs=1e-12)


def test_pixel_auroc_perfect_inverted_and_undefined() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True
    amap = mask.astype(np.float64)
    assert pixel_auroc([amap], [mask]) == 1.0
    assert pixel_auroc([-amap], [mask]) == 0.0
    assert pixel_auroc([amap], [np.zeros_like(mask)]) is None  # no defect pixel
    assert pixel_auroc([amap], [np.ones_like(mask)]) is None  # no normal pixel
    assert pixel_auroc([torch.from_numpy(amap)], [torch.from_numpy(mask)]) == 1.0


def test_pixel_metrics_memory_does_not_grow_with_the_number_of_maps() -> None:
    rng = np.random.default_rng(0)
    maps = [rng.random((256, 256), dtype=np.float32) for _ in range(16)]
    masks = [None if i % 2 else maps[i] > 0.9 for i in range(16)]
    all_pixels_float64 = 16 * 256 * 256 * 8
    tracemalloc.start()
    try:
        pixel_auroc(maps, masks)
        _, auroc_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        pro_score(maps, masks)
        _, pro_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Concatenating and sorting would need several times all_pixels_float64.
    assert auroc_peak < all_pixels_float64 / 3
    assert pro_peak < all_pixels_float64 / 3


def test_pixel_inputs_are_validated() -> None:
    amap = np.zeros((4, 4))
    with pytest.raises(ValueError, match="one mask per map"):
        pixel_auroc([amap], [])
    with pytest.raises(ValueError, match="empty"):
        pixel_auroc([], [])
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        pixel_auroc([np.zeros((1, 4, 4))], [None])
    with pytest.raises(ValueError, match="NaN"):
        pixel_auroc([np.full((4, 4), np.inf)], [None])
    with pytest.raises(ValueError, match="bool or 0/1"):
        pro_score([amap], [np.full((4, 4), 255)])
    with pytest.raises(ValueError, match="fpr_limit"):
        pro_score([amap], [None], fpr_limit=0.0)
    with pytest.raises(ValueError, match="steps"):
        pro_score([amap], [None], steps=0)


# ----------------------------------------------------------------------------- PRO


def _exact_pro(maps: list[np.ndarray], masks: list, fpr_limit: float) -> float:
    """AU-PRO from every distinct score (sorting all pixels): the reference definition."""
    scores, defect = _flat(maps, masks)
    weights = np.zeros(scores.size)  # 1 / region size on defect pixels
    offset, n_regions = 0, 0
    for amap, mask in zip(maps, masks, strict=True):
        if mask is not None:
            regions, count = ndimage.label(mask, structure=np.ones((3, 3)))
            sizes = np.bincount(regions.ravel())
            flat = regions.ravel()
            weights[offset : offset + amap.size][flat > 0] = 1.0 / sizes[flat[flat > 0]]
            n_regions += count
        offset += amap.size
    order = np.argsort(-scores, kind="stable")
    last_of_tie = np.r_[scores[order][1:] != scores[order][:-1], True]
    fpr = (np.cumsum(~defect[order]) / np.sum(~defect))[last_of_tie]
    pro = (np.cumsum(weights[order]) / n_regions)[last_of_tie]
    fpr, pro = np.r_[0.0, fpr, 1.0], np.r_[0.0, pro, 1.0]
    grid_end = np.searchsorted(fpr, fpr_limit, side="right")
    xs = np.r_[fpr[:grid_end], fpr_limit]
    ys = np.r_[pro[:grid_end], np.interp(fpr_limit, fpr[grid_end - 1 : grid_end + 1],
                                         pro[grid_end - 1 : grid_end + 1])]
    return float(np.trapezoid(ys, xs) / fpr_limit)


def _hand_example() -> tuple[list[np.ndarray], list]:
    # Normal image: 4 normal pixels. Defect image (1 x 5): regions R1 = {0.9, 0.35} and
    # R2 = {0.7}, normal pixels 0.05 and 0.5. Normal pixels overall: 0.05 0.1 0.2 0.3 0.35 0.5.
    normal = np.array([[0.1, 0.2], [0.3, 0.35]])
    defect = np.array([[0.9, 0.35, 0.05, 0.7, 0.5]])
    mask = np.array([[True, True, False, True, False]])
    return [normal, defect], [None, mask]


# Curve (FPR, PRO): t > 0.9 (0, 0); t = 0.9 (0, 1/4); 0.7 (0, 3/4); 0.5 (1/6, 3/4);
# 0.35 flags a normal pixel and R1's second pixel together (2/6, 1); then (..., 1) to (1, 1).
# limit 1: 1/6 * 3/4 + 1/6 * (3/4 + 1) / 2 + 2/3 * 1 = 6/48 + 7/48 + 32/48 = 15/16.
# limit 1/4: the sloped piece reaches 3/4 + 1.5 * (1/4 - 1/6) = 7/8 at FPR 1/4:
# (1/8 + 1/12 * (3/4 + 7/8) / 2) / (1/4) = (6/48 + 13/192) * 4 = 37/48.
# limit 0.1: flat at 3/4 -> 3/4.
@pytest.mark.parametrize(("limit", "expected"), [(1.0, 15 / 16), (0.25, 37 / 48), (0.1, 0.75)])
def test_pro_by_hand(limit: float, expected: float) -> None:
    maps, masks = _hand_example()
    assert pro_score(maps, masks, fpr_limit=limit) == pytest.approx(expected, abs=1e-9)
    assert _exact_pro(maps, masks, limit) == pytest.approx(expected, abs=1e-12)


def test_pro_regions_are_eight_connected() -> None:
    # Defect pixels (0,0) and (1,1) touch diagonally: one region of 2; (0,3) is its own.
    # Scores 0.9, 0.8 above every normal pixel, 0.2 below all of them: PRO is 1/2 (the
    # diagonal region fully found, the single pixel never) for every FPR in (0, 1).
    # Four-connected regions would give (1 + 1 + 0) / 3 instead.
    amap = np.linspace(0.3, 0.7, 12).reshape(3, 4)
    mask = np.zeros((3, 4), bool)
    mask[0, 0] = mask[1, 1] = mask[0, 3] = True
    amap[0, 0], amap[1, 1], amap[0, 3] = 0.9, 0.8, 0.2
    assert pro_score([amap], [mask], fpr_limit=1.0) == pytest.approx(0.5)


def test_pro_perfect_map_is_one() -> None:
    rng = np.random.default_rng(0)
    masks = [np.zeros((40, 40), bool) for _ in range(3)]
    masks[1][5:12, 5:20] = True
    masks[1][30:35, 30:38] = True
    masks[2][10:30, 18:22] = True
    # Defect pixels in [1, 1.5], normal ones in [0, 0.5]: perfectly separated.
    maps = [k + 0.5 * rng.random(k.shape) for k in masks]
    assert pro_score(maps, masks) == pytest.approx(1.0, abs=1e-12)
    assert pro_score(maps, masks, fpr_limit=0.05) == pytest.approx(1.0, abs=1e-12)


def test_pro_random_map_is_about_half_the_limit() -> None:
    rng = np.random.default_rng(1)
    masks = []
    for _ in range(6):
        mask = np.zeros((96, 96), bool)
        for _ in range(2):
            y, x = rng.integers(0, 70, 2)
            mask[y : y + 20, x : x + 25] = True
        masks.append(mask)
    maps = [rng.random(k.shape) for k in masks]
    # Overlap of a random region ~ FPR, so the area is limit^2 / 2, normalised: limit / 2.
    assert pro_score(maps, masks, fpr_limit=0.3) == pytest.approx(0.15, abs=0.01)


def test_pro_is_within_its_bound_of_the_exact_value() -> None:
    maps, masks = _blob_maps(8, 48, seed=3)
    for limit in (0.3, 0.05):
        exact = _exact_pro(maps, masks, limit)
        approx, bound = _pro_with_bound(maps, masks, fpr_limit=limit)
        assert abs(approx - exact) <= bound + 1e-12
        assert bound < 1e-3  # measured ~1e-4 with the default 4096 steps
        coarse, coarse_bound = _pro_with_bound(maps, masks, fpr_limit=limit, steps=32)
        assert abs(coarse - exact) <= coarse_bound + 1e-12


def test_pro_undefined_without_regions_or_normal_pixels() -> None:
    amap = np.random.default_rng(0).random((8, 8))
    assert pro_score([amap], [None]) is None
    assert pro_score([amap], [np.ones((8, 8), bool)]) is None


def test_auroc_standard_error_is_hanley_and_mcneils() -> None:
    from vitkit.anomaly.metrics import auroc_standard_error

    # A = 0.5, 10 vs 10: Q1 = Q2 = 1/3, variance (0.25 + 9 * (1/12) * 2) / 100 = 0.0175.
    assert auroc_standard_error(0.5, 10, 10) == pytest.approx(0.0175 ** 0.5)
    assert auroc_standard_error(1.0, 30, 30) == 0.0
    assert auroc_standard_error(0.9, 200, 200) < auroc_standard_error(0.9, 20, 20)
    with pytest.raises(ValueError, match="at least one"):
        auroc_standard_error(0.7, 0, 5)
