"""Tiny trained bundles (a CNN and a ViT) shared by the compression tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from vitkit.classify.config import TrainConfig
from vitkit.workflows.train import run_training


@pytest.fixture(scope="session")
def trained_bundles(tiny_image_folder: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> dict[str, Path]:
    """``{"cnn": bundle, "vit": bundle}``: test_resnet and test_vit, 2 epochs on the tiny
    3-class folder (read-only: copy one with ``fresh_bundle`` before adding variants)."""
    root = tmp_path_factory.mktemp("compress-bundles")
    bundles = {}
    for family, model in (("cnn", "test_resnet"), ("vit", "test_vit")):
        config = TrainConfig(data=str(tiny_image_folder), model=model, weights="none",
                             epochs=2, batch_size=8, out=str(root / family))
        result = run_training(config, progress=False)
        bundles[family] = Path(result.bundle)
    return bundles


@pytest.fixture
def fresh_bundle(trained_bundles: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    """A private copy of a trained bundle (``"cnn"`` or ``"vit"``) that a test may change."""

    def copy(family: str) -> Path:
        target = tmp_path / f"{family}-bundle"
        shutil.copytree(trained_bundles[family], target)
        return target

    return copy
