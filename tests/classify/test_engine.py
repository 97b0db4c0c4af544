"""The training engine in-process, on tiny data: what the CLI tests cannot set up cheaply."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vitkit.classify.config import TrainConfig
from vitkit.workflows.train import run_training

HEAD_ONLY = {"head": {"share": 1.0}, "top": {"share": 0.0}, "full": {"share": 0.0}}


def _config(data: Path, out: Path, **changes: object) -> TrainConfig:
    values: dict[str, object] = {
        "data": str(data), "model": "test_resnet", "weights": "none", "epochs": 1,
        "num_workers": 0, "stages": HEAD_ONLY, "out": str(out),
    }
    values.update(changes)
    return TrainConfig(**values)


@pytest.mark.parametrize("leftover", ["other data", "half written"])
def test_a_fresh_start_recomputes_the_feature_cache(tiny_image_folder: Path, tmp_path: Path,
                                                    leftover: str) -> None:
    """A run killed after caching features but before its first checkpoint leaves a cache; a
    new start in the same folder (allowed: there is no checkpoint) must not reuse it, since the
    data may have changed in between."""
    out = tmp_path / "run"
    cache = out / "cache" / "head_features.safetensors"
    cache.parent.mkdir(parents=True)
    if leftover == "other data":
        save_file({"train_features": torch.randn(5, 96), "train_labels": torch.zeros(5).long(),
                   "val_features": torch.randn(2, 96), "val_labels": torch.zeros(2).long()},
                  str(cache))
    else:
        save_file({"train_features": torch.randn(64, 96)}, str(tmp_path / "full"))
        cache.write_bytes((tmp_path / "full").read_bytes()[:200])

    result = run_training(_config(tiny_image_folder, out), progress=False)

    tensors = load_file(str(cache))
    assert tensors["train_features"].shape == (result.train_images, 96)
    assert tensors["val_labels"].shape == (result.val_images,)
    assert sorted(tensors["train_labels"].unique().tolist()) == [0, 1, 2]
    assert [p.name for p in cache.parent.iterdir()] == [cache.name], "no temp files"


def test_head_stage_validation_matches_the_saved_bundle(tiny_image_folder: Path,
                                                        tmp_path: Path) -> None:
    """The head stage validates on cached features; the bundle is measured on images. With the
    evaluation transform in both, the two accuracies agree."""
    result = run_training(_config(tiny_image_folder, tmp_path / "run", epochs=2), progress=False)
    assert result.epochs_run == 2
    assert result.best_epoch in (1, 2)
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    best = rows[result.best_epoch - 1]
    assert float(best["val_acc"]) == pytest.approx(result.val_accuracy, abs=1e-6)
