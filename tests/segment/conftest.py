"""A small segmentation bundle (random weights) for the predictor, serve and export tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitkit.bundle import save_bundle
from vitkit.segment.model import build_segmenter, bundle_meta

LABELS = ["background", "square", "ring"]


def write_bundle(path: Path, arch: str = "unet", size: int = 64, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model, record = build_segmenter(arch, "tu-efficientnet_lite0", len(LABELS), size,
                                    weights="none")
    return save_bundle(path, model, bundle_meta(record, LABELS, (0.485, 0.456, 0.406),
                                                (0.229, 0.224, 0.225)))


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("segment") / "bundle")
