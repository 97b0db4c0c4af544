"""Resolution as a variant option: the resize inside the graph, which models can take it, and
a quantized variant that runs at a smaller size on the bundle's usual input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import vitkit
from vitkit.compress.quantize import quantize_bundle
from vitkit.compress.resolution import InputResized, check_resolution
from vitkit.errors import VitkitError


def test_the_model_sees_an_antialiased_smaller_copy_of_its_input() -> None:
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x.mean(dim=(2, 3))

    image = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    out = InputResized(Spy(), 4)(image)
    assert seen[0].shape == (1, 3, 4, 4)
    smooth = F.interpolate(image, size=(4, 4), mode="bilinear", antialias=True)
    aliased = F.interpolate(image, size=(4, 4), mode="bilinear", antialias=False)
    assert torch.allclose(seen[0], smooth) and not torch.allclose(seen[0], aliased, atol=1e-2)
    assert torch.allclose(out, smooth.mean(dim=(2, 3)))
    InputResized(Spy(), 12)(image)  # already that size: passed through untouched
    assert seen[1] is image


def test_a_dynamic_size_vit_runs_with_fewer_tokens_and_a_fixed_grid_is_refused() -> None:
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=3,
                            dynamic_img_size=True).eval()
    x = torch.randn(2, 3, 160, 160)
    check_resolution(vit, 128, 160)
    with torch.inference_mode():
        expected = vit(F.interpolate(x, size=(128, 128), mode="bilinear", antialias=True,
                                     align_corners=False))
        assert torch.allclose(InputResized(vit, 128)(x), expected, atol=1e-5)
    fixed = timm.create_model("test_vit", pretrained=False, num_classes=3,
                              dynamic_img_size=False)
    with pytest.raises(VitkitError, match="fixed position grid"):
        check_resolution(fixed, 128, 160)
    with pytest.raises(VitkitError, match="multiple of the ViT's patch size 16; try 128 or 144"):
        check_resolution(vit, 130, 160)
    with pytest.raises(VitkitError, match="smaller than the bundle's input size"):
        check_resolution(vit, 160, 160)
    check_resolution(timm.create_model("test_resnet", pretrained=False), 100, 160)  # any size


@pytest.mark.slow
def test_a_smaller_size_openvino_variant_matches_torch_on_the_usual_input(
        fresh_bundle: Callable[[str], Path]) -> None:
    pytest.importorskip("openvino")
    bundle = fresh_bundle("cnn")
    result = quantize_bundle(bundle, method="bf16", runtime="openvino", image_size=96,
                             max_drop=100.0)
    assert result.variant.name == "openvino-bf16-96px"
    assert result.variant.options["model_input_size"] == 96
    assert result.comparison is not None and result.comparison.n_images == 6
    variant = vitkit.load(bundle, variant="openvino-bf16-96px")
    reference = vitkit.load(bundle, variant="torch-fp32")
    size = reference.preprocessing.input_size
    assert variant.preprocessing.input_size == size  # the bundle's usual input …
    x = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = InputResized(reference.torch_model(), 96)(x)  # … resized inside the graph
        unresized = reference(x)
    got = variant(x).float()
    assert (got - expected).abs().max() < 0.05 * expected.abs().max() + 0.02
    assert (got - expected).abs().max() < (unresized - expected).abs().max()
    with pytest.raises(VitkitError, match="file-based runtime"):
        quantize_bundle(bundle, method="bf16", runtime="torch", image_size=96)
