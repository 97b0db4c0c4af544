"""The t-SNE feature map: separation kept, subsampling balanced, files written by the step."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.classify.config import TrainConfig, TrustConfig
from vitkit.data import scan
from vitkit.report.feature_map import (
    balanced_subsample,
    compute_feature_map,
    knn_purity,
    render_feature_map,
    tsne_2d,
    write_feature_map,
)
from vitkit.workflows.feature_map import feature_map_step
from vitkit.workflows.trust import TrustContext, trust_steps


def blobs(per_class: int = 40, classes: int = 3, dims: int = 64, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs of unit spread whose centres lie 12 apart along separate axes."""
    rng = np.random.default_rng(seed)
    features = np.concatenate([rng.normal(0.0, 1.0, (per_class, dims)) + 12.0 * np.eye(dims)[c]
                               for c in range(classes)])
    return features, np.repeat(np.arange(classes), per_class)


def test_separated_blobs_stay_separated() -> None:
    features, targets = blobs()
    feature_map = compute_feature_map(features, targets, targets, seed=0)
    assert feature_map.points.shape == (120, 2)
    assert feature_map.knn_purity > 0.9
    # Each blob's 2-D centre is far from the others compared with the blob's own spread.
    centres = np.stack([feature_map.points[targets == c].mean(0) for c in range(3)])
    spread = max(feature_map.points[targets == c].std(0).max() for c in range(3))
    gaps = [np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 3 * spread


def test_purity_is_low_when_labels_do_not_follow_the_features() -> None:
    features, _ = blobs()
    shuffled = np.random.default_rng(1).integers(0, 3, len(features))
    points, _ = tsne_2d(features, seed=0)
    assert knn_purity(points, shuffled) < 0.6


def test_same_seed_same_map() -> None:
    features, targets = blobs(per_class=10)
    first, _ = tsne_2d(features, seed=3)
    again, _ = tsne_2d(features, seed=3)
    np.testing.assert_array_equal(first, again)


def test_perplexity_is_clipped_for_small_sets() -> None:
    features, _ = blobs(per_class=5, classes=2)
    _, perplexity = tsne_2d(features)
    assert perplexity == pytest.approx((10 - 1) / 3)
    with pytest.raises(ValueError, match="at least 5"):
        tsne_2d(features[:4])


def test_subsample_is_class_balanced() -> None:
    targets = np.repeat([0, 1, 2], [900, 100, 10])
    keep = balanced_subsample(targets, 200, seed=0)
    # Water-filling: class 2 gives all it has (10); classes 0 and 1 share the rest, 95 each.
    assert Counter(targets[keep].tolist()) == {0: 95, 1: 95, 2: 10}
    assert len(set(keep.tolist())) == 200 and np.all(np.diff(keep) > 0)
    np.testing.assert_array_equal(balanced_subsample(targets[:50], 200), np.arange(50))


def test_large_sets_are_capped() -> None:
    features, targets = blobs(per_class=30)
    feature_map = compute_feature_map(features, targets, targets, max_points=45)
    assert len(feature_map.points) == 45 and feature_map.n_total == 90
    assert Counter(feature_map.targets.tolist()) == {0: 15, 1: 15, 2: 15}


def test_files_record_points_labels_and_mistakes(tmp_path: Path) -> None:
    features, targets = blobs(per_class=10)
    predictions = targets.copy()
    predictions[[0, 15]] = [1, 2]
    feature_map = compute_feature_map(features, targets, predictions)
    paths = [f"img{i}.jpg" for i in range(len(targets))]
    png, record_path = write_feature_map(tmp_path, feature_map, ["a", "b", "c"], paths)
    assert png == tmp_path / "feature_map.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 300
    record = json.loads(record_path.read_text())
    assert record["n"] == 30 and record["n_total"] == 30
    assert record["classes"] == ["a", "b", "c"]
    assert len(record["points"]) == 30 and len(record["points"][0]) == 2
    wrong = [(label, pred, path) for label, pred, path in
             zip(record["labels"], record["predictions"], record["paths"], strict=True)
             if label != pred]
    assert wrong == [("a", "b", "img0.jpg"), ("b", "c", "img15.jpg")]
    assert record["perplexity"] == pytest.approx(29 / 3)


def test_render_many_classes() -> None:
    features, targets = blobs(per_class=6, classes=12, dims=16)
    feature_map = compute_feature_map(features, targets, targets)
    image = Image.open(io.BytesIO(render_feature_map(feature_map, [f"c{i}" for i in range(12)])))
    assert image.format == "PNG"


def test_trust_step_writes_the_files(trained_bundles: dict[str, Path],
                                     tiny_image_folder: Path, tmp_path: Path) -> None:
    samples = scan(tiny_image_folder).samples
    config = TrainConfig(data=str(tiny_image_folder), model="test_resnet", weights="none")
    context = TrustContext(trained_bundles["cnn"], tmp_path, config, {"val": samples},
                           progress=False)
    feature_map_step(context)
    record = json.loads((tmp_path / "feature_map.json").read_text())
    assert record["n"] == len(samples) == 36
    assert Counter(record["labels"]) == {"red": 12, "green": 12, "blue": 12}
    assert set(record["predictions"]) <= {"red", "green", "blue"}
    assert (tmp_path / "feature_map.png").stat().st_size > 1000


def test_feature_map_step_is_registered_last_and_optional() -> None:
    names = [name for name, _ in trust_steps(TrainConfig())]
    assert names[-1] == "feature_map"
    off = TrainConfig(trust=TrustConfig(feature_map=False))
    assert "feature_map" not in [name for name, _ in trust_steps(off)]
