"""Which attention path a model trains with: timm's fused SDPA stays on, attention rollout
switches it off only while it records."""

from __future__ import annotations

from pathlib import Path

import torch

from vitkit.backbones import create
from vitkit.backbones.attention import attention_path
from vitkit.explain.targets import attention_modules, capture_attention


def test_timm_vits_train_with_fused_attention_and_cnns_have_none() -> None:
    vit = create("test_vit", num_classes=3, weights="none").model
    assert attention_path(vit) == "sdpa"
    assert attention_path(create("test_resnet", num_classes=3, weights="none").model) == "none"


def test_the_path_is_read_from_every_layer() -> None:
    vit = create("test_vit", num_classes=3, weights="none").model
    layers = [module for _, module in attention_modules(vit)]
    # setattr: torch's stubs type a module's attributes as tensors or modules
    setattr(layers[0], "fused_attn", False)  # noqa: B010
    assert attention_path(vit) == "mixed"
    for layer in layers:
        setattr(layer, "fused_attn", False)  # noqa: B010
    assert attention_path(vit) == "eager"


def test_rollout_leaves_fused_attention_on_after_recording() -> None:
    vit = create("test_vit", num_classes=3, weights="none").model.eval()
    with capture_attention(vit) as recorder:
        assert attention_path(vit) == "eager", "the matrix is materialised while recording"
        with torch.no_grad():
            vit(torch.randn(1, 3, 64, 64))
    assert len(recorder.maps) == len(attention_modules(vit))
    assert attention_path(vit) == "sdpa"


def test_a_hugging_face_vit_reports_its_attention_implementation(tiny_hf_folder: Path) -> None:
    vit = create(str(tiny_hf_folder), num_classes=3, weights="none").model.eval()
    assert attention_path(vit) == "sdpa"  # transformers' default for ViT
    with capture_attention(vit):
        assert attention_path(vit) == "eager"
    assert attention_path(vit) == "sdpa"
