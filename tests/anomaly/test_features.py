"""Feature maps for PaDiM/PatchCore from CNNs and ViTs, and their rebuild from a bundle."""

from __future__ import annotations

import pytest
import torch

from vitkit.anomaly.features import (
    anomaly_preprocessing,
    build_feature_backbone,
    rebuild_feature_backbone,
)
from vitkit.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "method", "layers", "shapes"),
    [
        # test_resnet: strides 2..32; PatchCore takes strides 8 and 16, PaDiM 4, 8 and 16.
        ("test_resnet", "patchcore", [2, 3], [(48, 20, 20), (192, 10, 10)]),
        ("test_resnet", "padim", [1, 2, 3], [(32, 40, 40), (48, 20, 20), (192, 10, 10)]),
        # test_vit: 6 blocks, 160 px / patch 16 = a 10x10 token grid after every block.
        ("test_vit", "patchcore", [2, 4], [(64, 10, 10), (64, 10, 10)]),
        ("test_vit", "padim", [2, 3, 4], [(64, 10, 10)] * 3),
    ],
)
def test_default_layers_and_map_shapes(name: str, method: str, layers: list[int],
                                       shapes: list[tuple[int, int, int]]) -> None:
    backbone, chosen = build_feature_backbone(name, "none", method, None, None)
    assert chosen == layers
    size = tuple(backbone.preprocessing.input_size)
    maps = backbone.extractor(torch.randn(2, 3, *size))
    assert [tuple(m.shape[1:]) for m in maps] == shapes
    assert all(m.shape[0] == 2 and m.dtype == torch.float32 for m in maps)
    assert all(torch.isfinite(m).all() for m in maps)


def test_the_head_and_unused_blocks_are_pruned() -> None:
    full, _ = build_feature_backbone("test_resnet", "none", "padim", [1], None)
    deep, _ = build_feature_backbone("test_resnet", "none", "padim", [3], None)
    n_full = sum(p.numel() for p in full.extractor.parameters())
    n_deep = sum(p.numel() for p in deep.extractor.parameters())
    assert n_full < n_deep, "cutting after an early stage drops the later blocks"
    assert not any("fc" in name for name, _ in deep.extractor.named_parameters())


def test_rebuilt_extractor_gives_identical_maps() -> None:
    backbone, layers = build_feature_backbone("test_vit", "none", "patchcore", None, None)
    size = tuple(backbone.preprocessing.input_size)
    rebuilt = rebuild_feature_backbone(backbone.spec, layers, size)  # type: ignore[arg-type]
    rebuilt.load_state_dict(backbone.extractor.state_dict())
    x = torch.randn(1, 3, *size)
    with torch.inference_mode():
        for a, b in zip(backbone.extractor(x), rebuilt(x), strict=True):
            torch.testing.assert_close(a, b)


def test_preprocessing_keeps_the_whole_image() -> None:
    backbone, _ = build_feature_backbone("test_resnet", "none", "patchcore", None, 96)
    pre = backbone.preprocessing
    assert tuple(pre.input_size) == (96, 96)
    assert pre.crop_pct == 1.0 and pre.crop_mode == "squash"
    assert anomaly_preprocessing(pre, None).input_size == pre.input_size


def test_bad_layers_and_vit_sizes_are_user_errors() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        build_feature_backbone("test_resnet", "none", "patchcore", [2, 9], None)
    with pytest.raises(ConfigError, match="fixed input size"):
        build_feature_backbone("deit_tiny_patch16_224", "none", "patchcore", None, 160)
    # timm's test_vit interpolates its position grid (dynamic_img_size): any size is fine
    backbone, _ = build_feature_backbone("test_vit", "none", "patchcore", None, 96)
    maps = backbone.extractor(torch.zeros(1, 3, 96, 96))
    assert maps[0].shape[-2:] == (6, 6)  # 96 px / 16 px patches
