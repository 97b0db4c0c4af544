"""A detection bundle with random weights (64 px FCOS), saved as `vitkit detect train`
saves one, for the tests that load bundles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitkit.bundle import BundleMeta, save_bundle
from vitkit.detect.model import DetectRecord, build_detector


def write_detect_bundle(path: Path, score_threshold: float = 0.0) -> Path:
    """A random-weight 64 px FCOS bundle of classes a, b, saved as `vitkit detect train` does."""
    torch.manual_seed(0)
    record = DetectRecord(arch="fcos", backbone="efficientnet_lite0", classes=["a", "b"],
                          min_size=64, max_size=64, score_threshold=score_threshold)
    model, source = build_detector(record, weights="none")
    meta = BundleMeta(task="detect", backbone={"name": record.backbone, "source": "timm",
                                               "weights": source},
                      labels=record.classes,
                      preprocessing={"input_size": [64, 64], "interpolation": "bilinear",
                                     "mean": [0.485, 0.456, 0.406],
                                     "std": [0.229, 0.224, 0.225], "crop_pct": 1.0,
                                     "crop_mode": "squash"},
                      detect=record.model_dump(mode="json"))
    return save_bundle(path, model, meta)


@pytest.fixture(scope="module")
def detect_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_detect_bundle(tmp_path_factory.mktemp("detect") / "bundle")
