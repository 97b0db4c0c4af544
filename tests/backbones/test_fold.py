import pytest
import timm
import torch
from torch import nn

from vitkit.backbones.fold import fold_batch_norms, inference_copy


def _trained_norms(model: nn.Module) -> nn.Module:
    """Gives every norm statistics other than the identity, so that folding has work to do."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator) * 0.1)
    return model.eval()


# Largest |folded - original| over the largest |original| of a feature map: float32 rounding
# only. Measured over 12 seeds and 1-2 threads: efficientnet_lite0 up to 9.3e-6 (its unfolded
# float32 features are themselves 5e-6 from float64), resnet18 1.2e-6, mobilenetv3 9.5e-7;
# the bounds leave about 3x. A wrong fold (a missed shift, a scale applied twice) is O(1).
@pytest.mark.parametrize(("name", "bound"), [("efficientnet_lite0", 3e-5), ("resnet18", 4e-6),
                                             ("mobilenetv3_small_050", 4e-6)])
def test_folded_timm_cnn_computes_the_same_features(name: str, bound: float) -> None:
    torch.manual_seed(0)
    model = _trained_norms(timm.create_model(name, pretrained=False, features_only=True))
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = model(images)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = fold_batch_norms(model, images[:1])
    assert folded >= norms - 2  # every conv -> norm pair (a few norms may follow no conv)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == norms - folded
    with torch.no_grad():
        actual = model(images)
    for want, got in zip(expected, actual, strict=True):
        torch.testing.assert_close(got, want, rtol=0.0, atol=bound * float(want.abs().max()))


class _ReadsConvOutputTwice(nn.Module):
    """The conv's output feeds the norm and, in plain code the hooks cannot see, a sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.norm(y) + y


def test_a_conv_output_read_elsewhere_is_left_alone() -> None:
    model = _trained_norms(_ReadsConvOutputTwice())
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(images)
    assert fold_batch_norms(model, images[:1]) == 0
    assert isinstance(model.norm, nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected)


def test_training_mode_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(model, torch.randn(1, 3, 4, 4))


def test_inference_copy_leaves_the_original_and_skips_models_without_norms() -> None:
    model = _trained_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    fast, folded = inference_copy(model, torch.randn(1, 3, 8, 8))
    assert folded and fast is not model
    assert isinstance(model[1], nn.BatchNorm2d)  # the bundle's weights stay as trained
    images = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), model(images), rtol=1e-5, atol=1e-5)
    plain = nn.Sequential(nn.Linear(4, 4))
    assert inference_copy(plain, torch.randn(1, 4)) == (plain, False)
