"""The detection step of the staged trainer on a tiny batch: a loss with gradients on the
heads, the timm body as the encoder, and mAP@0.5 with per-class AP from the evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.detect.synthetic import make_squares
from torch.utils.data import DataLoader

from vitkit.data.boxes import (
    DetectionDataset,
    collate_detection,
    detection_transform,
    scan_detection,
    validate_detection,
)
from vitkit.detect.model import DetectRecord, build_detector
from vitkit.tasks.detect import DetectStep


@pytest.mark.parametrize(("arch", "offset"), [("fcos", 0), ("fasterrcnn", 1)])
def test_the_step_trains_and_measures_a_detector(tmp_path: Path, arch: str, offset: int
                                                 ) -> None:
    data = make_squares(tmp_path / "squares", n_train=2, n_val=2, size=64)
    samples = validate_detection(scan_detection(data), progress=False).usable
    torch.manual_seed(0)
    record = DetectRecord(arch=arch, backbone="efficientnet_lite0", classes=["square"],
                          min_size=64, max_size=64)
    model, _ = build_detector(record, weights="none")
    dataset = DetectionDataset(samples, detection_transform(64, train=True),
                               label_offset=offset)
    batch = collate_detection([dataset[0], dataset[1]])
    step = DetectStep(["square"], offset)
    encoder = {id(p) for p in step.encoder_parameters(model)}
    assert encoder == {id(p) for p in model.backbone.body.parameters()}
    model.train()
    loss, n = step.training_loss(model, batch, torch.device("cpu"))
    assert n == 2 and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    heads = [p for p in model.parameters() if id(p) not in encoder]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in heads)
    model.eval()
    calls: list[int] = []
    loader = DataLoader(DetectionDataset(samples, detection_transform(64, train=False),
                                         label_offset=offset),
                        batch_size=2, collate_fn=collate_detection)
    with torch.no_grad():
        result = step.evaluate(model, loader, torch.device("cpu"), lambda: calls.append(1))
    assert 0.0 <= result.metric <= 1.0 and calls == [1, 1]
    assert set(result.details["per_class"]) == {"square"}
    assert result.details["n_images"] == 4
