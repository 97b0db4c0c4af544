"""MLP-width pruning: units that contribute nothing go first and change nothing; a pruned and
recovered bundle is the same architecture with a smaller mlp_ratio and runs like any other."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch

import vitkit
from vitkit.bundle import read_meta
from vitkit.compress.prune import mlp_importance, prune_mlp_state, pruned_width, vit_blocks
from vitkit.errors import VitkitError


def test_units_that_contribute_nothing_are_pruned_first_and_change_nothing() -> None:
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=3).eval()
    generator = torch.Generator().manual_seed(1)
    for block in vit.blocks:  # half the units of every block write nothing to the residual
        dead = torch.randperm(192, generator=generator)[:96]
        with torch.no_grad():
            block.mlp.fc2.weight[:, dead] = 0.0
    images = torch.randn(4, 3, 160, 160, generator=generator)
    importance = mlp_importance(vit, [images[:2], images[2:]])
    assert all((scores == 0).sum() == 96 for scores in importance)
    state, ratio = prune_mlp_state(vit, importance, width=96)
    assert ratio == 1.5
    pruned = timm.create_model("test_vit", pretrained=False, num_classes=3, mlp_ratio=ratio)
    pruned.load_state_dict(state)
    assert pruned.blocks[0].mlp.fc1.out_features == 96
    with torch.inference_mode():
        torch.testing.assert_close(pruned.eval()(images), vit(images), atol=1e-5, rtol=1e-5)


def test_widths_and_models_that_cannot_be_pruned_say_why() -> None:
    assert pruned_width(1536, 0.5) == 768 and pruned_width(1536, 0.01) == 32
    with pytest.raises(VitkitError, match="between 0 and 1"):
        pruned_width(1536, 1.0)
    with pytest.raises(VitkitError, match="keeps all 192 units"):
        pruned_width(192, 0.95)
    with pytest.raises(VitkitError, match="timm Vision Transformers"):
        vit_blocks(timm.create_model("test_resnet", pretrained=False))


@pytest.mark.slow
def test_a_pruned_and_recovered_vit_bundle_runs_like_any_other(
        fresh_bundle: Callable[[str], Path], tmp_path: Path) -> None:
    from vitkit.workflows.prune import run_prune

    bundle = fresh_bundle("vit")
    result = run_prune(bundle, tmp_path / "pruned", mlp_keep=0.5, epochs=1, progress=False,
                       distill_options={"batch_size": 8})
    assert result.mlp_width == [192, 96]
    assert result.parameters[1] < result.parameters[0]
    assert set(result.accuracy) == {"unpruned", "pruned", "recovered"}
    assert result.accuracy["recovered"] == result.distill["val_accuracy"]
    meta = read_meta(result.bundle)
    assert meta.backbone["timm_kwargs"]["mlp_ratio"] == 1.5
    assert meta.preprocessing["input_size"] == read_meta(bundle).preprocessing["input_size"]
    predictor = vitkit.load(result.bundle)
    assert predictor.torch_model().model.blocks[0].mlp.fc1.out_features == 96
    size = predictor.preprocessing.input_size
    assert predictor(torch.zeros(2, 3, *size)).shape == (2, 3)
