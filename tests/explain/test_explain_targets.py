"""Target layers and attention capture on real timm and Hugging Face models (random weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from vitkit.backbones import ImageClassifier, create
from vitkit.errors import ConfigError, VitkitError
from vitkit.explain import Explainer, choose_method
from vitkit.explain.targets import (
    attention_modules,
    capture_attention,
    default_target_layer,
    layer_candidates,
    resolve_layer,
    token_layout,
)


def _timm(name: str) -> tuple[ImageClassifier, tuple[int, int]]:
    torch.manual_seed(0)
    model = ImageClassifier(timm.create_model(name, pretrained=False, num_classes=3), "timm")
    return model.eval(), tuple(model.model.default_cfg["input_size"][1:])  # type: ignore[return-value]


@pytest.mark.parametrize(("name", "layer"), [("test_resnet", "layer4"),
                                             ("test_efficientnet", "bn2"),
                                             ("test_vit", "blocks.5.norm1")])
def test_default_target_layer(name: str, layer: str) -> None:
    model, size = _timm(name)
    assert default_target_layer(model, size) == layer
    assert layer_candidates(model, size)[0] == layer


@pytest.mark.parametrize(("name", "layers", "heads", "tokens"),
                         [("test_vit", 6, 2, 101), ("deit_tiny_patch16_224", 12, 3, 197)])
def test_fused_attention_is_captured_and_restored(name: str, layers: int, heads: int,
                                                  tokens: int) -> None:
    model, size = _timm(name)
    modules = attention_modules(model)
    assert len(modules) == layers
    assert all(m.fused_attn for _, m in modules)  # timm's default: weights never materialised
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused_logits = model(images)
        with capture_attention(model) as recorder:
            assert not any(m.fused_attn for _, m in modules)
            explicit_logits = model(images)
    assert all(m.fused_attn for _, m in modules)
    assert len(recorder.maps) == layers
    for attention in recorder.maps:
        assert attention.shape == (2, heads, tokens, tokens)
        torch.testing.assert_close(attention.sum(dim=-1), torch.ones(2, heads, tokens))
    torch.testing.assert_close(explicit_logits, fused_logits, atol=1e-4, rtol=1e-4)
    assert token_layout(model, size, tokens) == (1, (size[0] // 16, size[1] // 16))


def test_capture_restores_fused_attention_after_an_error() -> None:
    model, _ = _timm("test_vit")
    with pytest.raises(AssertionError, match="patch size"), capture_attention(model):
        model(torch.zeros(1, 3, 7, 7))  # timm asserts the input size
    assert all(m.fused_attn for _, m in attention_modules(model))


def test_explainer_on_vit_gives_grid_maps_for_every_method() -> None:
    model, size = _timm("test_vit")
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    for method in ("rollout", "attn-last", "gradcam", "gradcam++"):
        batch = Explainer(model, size, method)(images)
        assert batch.maps.shape == (2, 10, 10), method
        assert batch.maps.min() >= 0 and batch.maps.max() <= 1
        assert torch.isclose(batch.maps.flatten(1).amax(1), torch.ones(2)).all(), method
    assert all(m.fused_attn for _, m in attention_modules(model))


def test_gradcam_follows_the_explained_class() -> None:
    model, size = _timm("test_resnet")
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3))
    explainer = Explainer(model, size, "gradcam")
    maps = [explainer(images, torch.tensor([k])).maps for k in range(3)]
    assert explainer.layer == "layer4"
    assert maps[0].shape == (1, 5, 5)
    assert not torch.allclose(maps[0], maps[1])  # a different class, a different map
    same = explainer(images, torch.tensor([0]))
    torch.testing.assert_close(same.maps, maps[0])


def test_method_choice_and_errors() -> None:
    cnn, size = _timm("test_resnet")
    vit, _ = _timm("test_vit")
    assert choose_method(cnn, "auto") == "gradcam"
    assert choose_method(vit, "auto") == "rollout"
    with pytest.raises(ConfigError, match="no attention layers"):
        choose_method(cnn, "rollout")
    with pytest.raises(ConfigError, match="unknown explanation method"):
        choose_method(cnn, "lime")
    with pytest.raises(VitkitError, match="no attention layers"), capture_attention(cnn):
        pass
    with pytest.raises(ConfigError, match="--layer applies to gradcam"):
        Explainer(vit, size, "rollout", layer="blocks.1.norm1")


def test_layer_override_and_unknown_layer() -> None:
    model, size = _timm("test_resnet")
    assert Explainer(model, size, "gradcam", layer="layer3")(torch.zeros(1, 3, *size)).maps.shape \
        == (1, 10, 10)
    assert resolve_layer(model, "model.layer3") is model.model.layer3
    with pytest.raises(ConfigError) as error:
        resolve_layer(model, "layer9", size)
    message = str(error.value)
    assert "layer9" in message and "layer4, layer3, layer2" in message


def test_hugging_face_vit_attention_and_layer(tiny_hf_folder: Path) -> None:
    model = create(str(tiny_hf_folder), num_classes=3, weights="auto").model.eval()
    size = (32, 32)
    assert default_target_layer(model, size).endswith("layers.1.layernorm_before")
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(4))
    before = model.model.config._attn_implementation
    with torch.no_grad(), capture_attention(model) as recorder:
        model(images)
    assert model.model.config._attn_implementation == before
    assert [tuple(a.shape) for a in recorder.maps] == [(2, 2, 17, 17)] * 2
    for method in ("rollout", "gradcam"):
        assert Explainer(model, size, method)(images).maps.shape == (2, 4, 4)
