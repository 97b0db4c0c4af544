"""Feature views: first-layer filters, a layer's strongest channels, and `vitkit explain
--method filters|features` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from tests.e2e.cli import run_cli
from torch import nn

from vitkit.errors import ConfigError, VitkitError
from vitkit.explain.views import (
    GAP,
    activation_grid,
    channel_activations,
    filter_grid,
    first_conv,
    first_conv_filters,
    layer_activations,
    tokens_to_maps,
    top_channels,
)


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=2).eval()


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2,
                             img_size=64).eval()


def test_first_conv_filters_is_the_stem_weight(cnn: nn.Module, vit: nn.Module) -> None:
    assert first_conv_filters(cnn) is cnn.conv1.weight
    assert first_conv_filters(vit) is vit.patch_embed.proj.weight
    assert first_conv(vit)[0] == "patch_embed.proj"
    with pytest.raises(VitkitError, match="no 2-D convolution"):
        first_conv_filters(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_filter_grid_size_and_cells(cnn: nn.Module) -> None:
    weights = first_conv_filters(cnn)  # (64, 3, 7, 7)
    grid = filter_grid(weights, max_filters=64, columns=8, cell=21)
    assert grid.mode == "RGB"
    assert grid.size == (8 * 21 + 7 * GAP, 8 * 21 + 7 * GAP)
    default = filter_grid(weights)  # 7 px kernels enlarged 6x: 42 px cells
    assert default.size == (8 * 42 + 7 * GAP, 8 * 42 + 7 * GAP)
    assert filter_grid(weights, max_filters=10, columns=8, cell=7).size == (
        8 * 7 + 7 * GAP, 2 * 7 + GAP)
    # each filter scaled on its own, nearest upscaling: cell (0, 0) is filter 0's pixel (0, 0)
    kernel = weights[0].detach()
    scaled = (kernel - kernel.min()) / (kernel.max() - kernel.min())
    expected = tuple(int(v) for v in (scaled[:, 0, 0] * 255).round())
    assert default.getpixel((0, 0)) == default.getpixel((5, 5)) == expected
    grey = filter_grid(torch.randn(4, 2, 3, 3), columns=4, cell=3)
    r, g, b = grey.getpixel((0, 0))  # type: ignore[misc]
    assert r == g == b  # not 3 input channels: the channel mean, in grey


def test_hooked_cnn_activations_match_running_the_stages_by_hand(cnn: nn.Module) -> None:
    torch.manual_seed(1)
    batch = torch.randn(2, 3, 64, 64)
    name, acts = layer_activations(cnn, batch)
    assert name == "layer4"  # the last stage by default
    with torch.no_grad():
        x = cnn.maxpool(cnn.act1(cnn.bn1(cnn.conv1(batch))))
        for stage in ("layer1", "layer2", "layer3"):
            x = getattr(cnn, stage)(x)
        third = x.clone()
        expected = cnn.layer4(x)
    assert acts.shape == (2, 512, 2, 2)
    torch.testing.assert_close(acts, expected)
    name, one = channel_activations(cnn, batch[1], "layer3")
    assert name == "layer3" and one.shape == (256, 4, 4)
    torch.testing.assert_close(one, third[1])


def test_unknown_layer_lists_real_ones(cnn: nn.Module) -> None:
    with pytest.raises(ConfigError, match=r"no layer named 'layer9'.*layer4"):
        channel_activations(cnn, torch.zeros(1, 3, 32, 32), "layer9")


def test_vit_tokens_become_patch_maps(vit: nn.Module) -> None:
    torch.manual_seed(2)
    image = torch.randn(1, 3, 64, 64)
    name, acts = channel_activations(vit, image)
    assert name == "blocks.11"
    with torch.no_grad():
        tokens = vit.blocks(vit.norm_pre(vit._pos_embed(vit.patch_embed(image))))
    assert acts.shape == (192, 4, 4)  # (D, 64/16, 64/16), class token dropped
    patches = tokens[0, 1:]  # (16, 192), row-major
    torch.testing.assert_close(acts[:, 1, 2], patches[1 * 4 + 2])
    torch.testing.assert_close(acts, patches.T.reshape(192, 4, 4))


def test_tokens_to_maps_prefix_and_grid() -> None:
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)  # 1 prefix + 2x3
    maps = tokens_to_maps(tokens, num_prefix_tokens=1, input_size=(32, 48))
    assert maps.shape == (2, 3, 2, 3)
    assert torch.equal(maps[1, :, 1, 0], tokens[1, 1 + 3])
    square = tokens_to_maps(torch.randn(1, 11, 5))  # no count given: 11 - 9 = 2 prefix tokens
    assert square.shape == (1, 5, 3, 3)


def test_top_channels_by_energy() -> None:
    acts = torch.zeros(5, 2, 2)
    acts[3] = -3.0  # the most energy although negative
    acts[1] = 2.0
    acts[4, 0, 0] = 3.0  # mean square 9/4 < 4
    acts[0] = 0.5
    assert top_channels(acts, k=3) == [3, 1, 4]
    assert top_channels(acts, k=10) == [3, 1, 4, 0, 2]


def test_activation_grid_size() -> None:
    image = Image.new("RGB", (40, 30))
    grid = activation_grid(image, torch.randn(8, 3, 4), [5, 1, 2, 7, 0], columns=4)
    assert grid.size == (4 * 40 + 3 * GAP, 2 * 30 + GAP)
    with pytest.raises(ValueError, match="channel indices"):
        activation_grid(image, torch.randn(2, 3, 4), [2])


def test_cli_features_json_and_filters(trained_bundles: dict[str, Path],
                                       tiny_image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "features"
    proc = run_cli("explain", trained_bundles["cnn"], tiny_image_folder / "green",
                   "--method", "features", "--channels", "4", "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["method"], doc["layer"]) == ("features", "layer4")
    assert "filters" not in doc and doc["skipped"] == []
    assert len(doc["explanations"]) == 12
    records = json.loads((out / "explanations.json").read_text())
    first = records[0]
    assert set(first) == {"path", "method", "layer", "channels", "overlay"}
    assert first["method"] == "features" and len(first["channels"]) == 4
    assert first["overlay"].endswith("_features.png")
    with Image.open(out / first["overlay"]) as grid:
        assert grid.size == (4 * 160 + 3 * GAP, 160)  # 4 channels at the 160 px model view
    page = (out / "index.html").read_text()
    assert page.count("<figure") == 12 and first["overlay"] in page

    out = tmp_path / "filters"
    proc = run_cli("explain", trained_bundles["cnn"], tiny_image_folder / "green",
                   "--method", "filters", "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["filters"] == str(out / "filters.png") and (out / "filters.png").is_file()
    assert doc["method"] == "filters" and doc["layer"] == "conv1.0"  # test_resnet: a deep stem
    assert json.loads((out / "explanations.json").read_text())[0]["overlay"] == "filters.png"
    assert 'src="filters.png"' in (out / "index.html").read_text()
