"""Gradient checkpointing changes memory, not the numbers: the same loss, gradients and
batch-norm statistics as a run without it, on tiny timm models."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt

from vitkit.backbones import ImageClassifier, create
from vitkit.classify.grad_checkpointing import enable_grad_checkpointing
from vitkit.classify.schedule import apply_trainability, plan_stage
from vitkit.errors import ConfigError


def _twins(name: str, **timm_kwargs: object) -> tuple[ImageClassifier, ImageClassifier]:
    torch.manual_seed(0)
    plain = create(name, num_classes=3, weights="none", timm_kwargs=timm_kwargs).model
    checkpointed = copy.deepcopy(plain)
    enable_grad_checkpointing(checkpointed)
    assert checkpointed.model.grad_checkpointing and not plain.model.grad_checkpointing
    return plain, checkpointed


def _step(model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    return float(loss.detach())


def _assert_same_gradients(a: ImageClassifier, b: ImageClassifier) -> int:
    compared = 0
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert (pa.grad is None) == (pb.grad is None), name
        if pa.grad is not None:
            torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-5, atol=1e-7, msg=name)
            compared += 1
    return compared


@pytest.mark.parametrize("stage", ["full", "top"])
def test_a_vit_gets_the_same_loss_and_gradients(stage: str) -> None:
    """In the top stage the checkpointed blocks' input needs no gradient (the blocks below are
    frozen): their weights must still get theirs (timm's non-re-entrant checkpoints)."""
    plain, checkpointed = _twins("vit_tiny_patch16_224", img_size=64, depth=4)
    for model in (plain, checkpointed):
        apply_trainability(model, plan_stage(model, stage, top_blocks=2))
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    assert _step(checkpointed, images, labels) == pytest.approx(_step(plain, images, labels),
                                                                rel=1e-6)
    compared = _assert_same_gradients(plain, checkpointed)
    assert compared == sum(p.requires_grad for p in plain.parameters())
    top_block = dict(checkpointed.named_parameters())["model.blocks.3.attn.qkv.weight"]
    assert top_block.grad is not None and top_block.grad.abs().sum() > 0


def test_batch_norm_statistics_are_updated_once_per_step() -> None:
    """The recomputed forward would update the running statistics a second time; they must
    end exactly as without checkpointing (batch counters included)."""
    plain, checkpointed = _twins("test_efficientnet")
    torch.manual_seed(1)
    batches = [(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 1])) for _ in range(3)]
    for model in (plain, checkpointed):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for images, labels in batches:
            optimizer.zero_grad()
            _step(model, images, labels)
            optimizer.step()
    buffers = dict(checkpointed.named_buffers())
    counted = 0
    for name, value in plain.named_buffers():
        torch.testing.assert_close(buffers[name], value, rtol=1e-5, atol=1e-6, msg=name)
        counted += name.endswith("num_batches_tracked")
    assert counted > 10
    assert int(buffers["model.bn1.num_batches_tracked"]) == 3
    for (name, pa), pb in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6, msg=name)


def test_models_without_support_are_refused_with_the_families_that_have_it() -> None:
    model = create("dla46_c", num_classes=2, weights="none").model  # timm: not supported
    with pytest.raises(ConfigError, match="does not support gradient checkpointing.*ViT"):
        enable_grad_checkpointing(model)


def test_re_entrant_checkpoints_are_refused() -> None:
    model = create("test_vit", num_classes=2, weights="none").model
    assert not use_reentrant_ckpt()
    set_reentrant_ckpt(True)
    try:
        with pytest.raises(ConfigError, match="TIMM_REENTRANT_CKPT"):
            enable_grad_checkpointing(model)
    finally:
        set_reentrant_ckpt(False)


def test_a_hugging_face_vit_uses_its_own_checkpointing(tiny_hf_folder: Path) -> None:
    torch.manual_seed(0)
    plain = create(str(tiny_hf_folder), num_classes=3, weights="none").model.train()
    checkpointed = copy.deepcopy(plain)
    enable_grad_checkpointing(checkpointed)
    inner = checkpointed.model
    assert getattr(inner, "is_activation_checkpointing", None) \
        or inner.is_gradient_checkpointing  # transformers < 5
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    assert _step(checkpointed, images, labels) == pytest.approx(_step(plain, images, labels),
                                                                rel=1e-6)
    assert _assert_same_gradients(plain, checkpointed) > 0
