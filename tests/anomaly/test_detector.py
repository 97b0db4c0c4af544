"""Fitted detectors end to end through the library: maps point at the defect, bundles
round-trip, CNN and ViT features both work, and odd input sizes are scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.anomaly.woven import SIZE, to_image, with_stain, woven_texture

from vitkit.anomaly.config import AnomalyFitConfig
from vitkit.anomaly.detector import AnomalyScore
from vitkit.anomaly.detector import load_anomaly_detector as load_detector
from vitkit.workflows.anomaly import run_fit


def fit(normal_dir: Path, out: Path, method: str, model: str = "efficientnet_lite0",
        weights: str = "auto", global_stats: bool = False) -> Path:
    # patchmean: one patch per weave period, so patch statistics do not depend on the phase.
    extra: dict[str, object] = {"patch_size": 12} if method == "patchmean" else {}
    if global_stats:
        extra["global_stats"] = True
    config = AnomalyFitConfig(data=str(normal_dir), method=method,  # type: ignore[arg-type]
                              model=model, weights=weights, out=str(out), holdout=0.3,
                              batch_size=8, **extra)
    run_fit(config, progress=False)
    return out


def score_images(bundle: Path, images: list[Image.Image], tmp_path: Path
                 ) -> list[AnomalyScore]:
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"query-{i}.png")
        image.save(paths[-1])
    detector = load_detector(bundle, "cpu")
    results = [result for result, _ in detector.score_paths(paths, with_maps=True)]
    assert all(isinstance(r, AnomalyScore) for r in results)
    return results  # type: ignore[return-value]


def raw_maps(bundle: Path, images: list[Image.Image]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Raw scores and full-size raw maps (the normalised maps saturate at 1 on strong defects,
    which would hide where the peak is)."""
    detector = load_detector(bundle, "cpu")
    raw, patch_maps = detector.raw_scores(images)
    return raw.numpy(), detector.full_maps(patch_maps, [im.size for im in images],
                                           normalized=False)


# Defects in different places, one touching the border (borders are where padding effects live).
BOXES = [(40, 50, 72, 82), (120, 110, 150, 140), (0, 150, 30, 185)]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["patchcore", "padim", "patchmean"])
def test_map_peak_falls_inside_the_pasted_defect(method: str, normal_dir: Path,
                                                  tmp_path: Path) -> None:
    bundle = fit(normal_dir, tmp_path / "bundle", method)
    fresh = [woven_texture(100 + i) for i in range(len(BOXES))]
    defective = [with_stain(p, box) for p, box in zip(fresh, BOXES, strict=True)]
    normals = [to_image(woven_texture(200 + i)) for i in range(4)]
    scores, maps = raw_maps(bundle, defective + normals)
    for full, (left, top, right, bottom) in zip(maps[:len(BOXES)], BOXES, strict=True):
        assert full.shape == (SIZE, SIZE)
        row, col = np.unravel_index(int(np.argmax(full)), full.shape)
        # The stain's edge (dark against weave) is its most unusual part; PaDiM's finest cells
        # are 4 px of its 224 px input (3.4 px here), so a peak on the edge may sit that far out.
        margin = 4
        assert left - margin <= col < right + margin, (method, (col, row))
        assert top - margin <= row < bottom + margin, (method, (col, row))
    assert scores[:len(BOXES)].min() > scores[len(BOXES):].max()
    # The user-facing results agree: normalised maps in [0, 1], defects labelled anomalies.
    results = score_images(bundle, defective, tmp_path)
    assert all(r.label == "anomaly" for r in results)
    assert all(r.map is not None and r.map.min() >= 0.0 and r.map.max() <= 1.0
               for r in results)


@pytest.mark.slow
def test_bundle_round_trip_gives_identical_scores(normal_dir: Path, tmp_path: Path) -> None:
    bundle = fit(normal_dir, tmp_path / "bundle", "patchcore")
    queries = [to_image(woven_texture(300)), with_stain(woven_texture(301), BOXES[0])]
    first = score_images(bundle, queries, tmp_path)
    second = score_images(bundle, queries, tmp_path)
    assert [r.raw_score for r in first] == [r.raw_score for r in second]
    np.testing.assert_array_equal(first[1].map, second[1].map)
    # In-memory scores (the detector that fit used) equal the reloaded bundle's.
    detector = load_detector(bundle, "cpu")
    raw, _ = detector.raw_scores(queries)
    np.testing.assert_allclose(raw.numpy(), [r.raw_score for r in first], rtol=1e-6)


@pytest.mark.slow
def test_global_statistics_flag_a_whole_image_change(normal_dir: Path, tmp_path: Path) -> None:
    bundle = fit(normal_dir, tmp_path / "global", "patchcore", global_stats=True)
    detector = load_detector(bundle, "cpu")
    assert detector.record["fit"]["global_stats_dim"] == 2 * (40 + 112)
    normals = [to_image(woven_texture(500 + i)) for i in range(4)]
    flatter = [to_image(woven_texture(510 + i, contrast=25.0)) for i in range(4)]
    scores, _ = raw_maps(bundle, normals + flatter)
    assert scores[4:].min() > scores[:4].max()
    results = score_images(bundle, flatter, tmp_path)
    assert all(r.label == "anomaly" for r in results)
    # A local defect still counts, through the patch part.
    stained, _ = raw_maps(bundle, [with_stain(woven_texture(520), BOXES[1])])
    assert stained[0] > scores[:4].max()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["patchcore", "padim"])
def test_vit_patch_tokens_work_as_features(method: str, normal_dir: Path,
                                           tmp_path: Path) -> None:
    # test_vit: a small random-weight ViT (no ViT weights are available offline); the point is
    # the token-grid path end to end, not detection quality.
    bundle = fit(normal_dir, tmp_path / "vit", method, model="test_vit", weights="none")
    detector = load_detector(bundle, "cpu")
    assert detector.record["layers"] and detector.input_size == (160, 160)
    odd_sizes = [to_image(woven_texture(400, size=97)), to_image(woven_texture(401, size=300))]
    raw, patch_maps = detector.raw_scores(odd_sizes)
    assert raw.shape == (2,) and np.isfinite(raw.numpy()).all()
    assert tuple(patch_maps.shape) == (2, 10, 10)  # 160 px / patch 16
    maps = detector.full_maps(patch_maps, [image.size for image in odd_sizes])
    assert [m.shape for m in maps] == [(97, 97), (300, 300)]


@pytest.mark.slow
def test_eval_pixel_metrics_use_unclipped_maps(normal_dir: Path, tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    from vitkit.anomaly.pixel_metrics import _pixel_auroc_with_bound
    from vitkit.workflows.anomaly import run_eval

    root = tmp_path / "mvtec"
    (root / "test" / "good").mkdir(parents=True)
    (root / "test" / "stain").mkdir()
    (root / "ground_truth" / "stain").mkdir(parents=True)
    images, masks = [], []
    for i in range(3):
        image = to_image(woven_texture(600 + i))
        image.save(root / "test" / "good" / f"g{i}.png")
        images.append(image)
        masks.append(np.zeros((SIZE, SIZE), bool))
    for i, box in enumerate(BOXES):
        image = with_stain(woven_texture(610 + i), box)
        image.save(root / "test" / "stain" / f"s{i}.png")
        mask = np.zeros((SIZE, SIZE), bool)
        mask[box[1]:box[3], box[0]:box[2]] = True
        Image.fromarray(mask.astype(np.uint8) * 255).save(
            root / "ground_truth" / "stain" / f"s{i}_mask.png")
        images.append(image)
        masks.append(mask)
    bundle = fit(normal_dir, tmp_path / "bundle", "patchcore")
    result = run_eval(bundle, root, report=False, progress=False)
    _, maps = raw_maps(bundle, images)
    expected = roc_auc_score(np.concatenate([m.ravel() for m in masks]),
                             np.concatenate([m.ravel() for m in maps]))
    # Strong stains saturate the normalised maps at 1; on those, the AUROC would be lower.
    # The evaluation bins the scores (65,536 bins) and knows how far that can move the result:
    # on the raw maps it must give exactly the same figure (measured: identical), and that
    # figure lies within its binning bound of sklearn's exact one (measured: 1.5e-9 apart,
    # bound 3.6e-7).
    binned, bound = _pixel_auroc_with_bound(maps, masks)
    assert result["pixel_auroc"] == pytest.approx(binned, abs=1e-12)
    assert abs(result["pixel_auroc"] - expected) <= bound + 1e-12
    assert bound < 1e-6
    assert result["image_auroc"] == 1.0


def test_a_chosen_image_score_rule_is_stored_and_used_after_reloading(
        normal_dir: Path, tmp_path: Path) -> None:
    from vitkit.anomaly.patchcore import image_scores_from_patches

    config = AnomalyFitConfig(data=str(normal_dir), out=str(tmp_path / "b"), image_score="top3",
                              batch_size=8)
    run_fit(config, progress=False)
    detector = load_detector(tmp_path / "b", "cpu")
    assert detector.method.image_score == "top3"  # type: ignore[attr-defined]
    raw, maps = detector.raw_scores([with_stain(woven_texture(301), BOXES[0])])
    assert torch.allclose(raw, image_scores_from_patches(maps, "top3"))
    with pytest.raises(ValueError, match="image_score is a patchcore option"):
        AnomalyFitConfig(data=".", method="padim", image_score="max")
