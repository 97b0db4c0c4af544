"""Corruptions: identity at zero strength, shape and range kept, each does what it says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from vitkit.evaluate.corruptions import (
    CORRUPTIONS,
    brightness,
    contrast,
    corrupt,
    gaussian_blur,
    gaussian_noise,
    jpeg,
)


def _images(batch: int = 2, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand((batch, 3, size, size), generator=generator)


@pytest.mark.parametrize(("name", "identity"), [("noise", 0.0), ("blur", 0.0),
                                                 ("brightness", 1.0), ("contrast", 1.0)])
def test_zero_strength_is_the_identity(name: str, identity: float) -> None:
    x = _images()
    assert torch.equal(corrupt(x, name, identity), x)


def test_jpeg_at_quality_100_changes_little_and_at_10_a_lot() -> None:
    x = gaussian_blur(_images(size=64), 2.0)  # smooth, like a photo
    assert (jpeg(x, 100) - x).abs().mean() < 0.01
    assert (jpeg(x, 10) - x).abs().mean() > (jpeg(x, 75) - x).abs().mean()


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_severity_keeps_shape_and_range(name: str) -> None:
    x = _images()
    for severity in CORRUPTIONS[name].severities:
        for images in (x, x[0]):  # a batch and a single image
            out = corrupt(images, name, severity, torch.Generator().manual_seed(1))
            assert out.shape == images.shape
            assert out.dtype == images.dtype
            assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
            assert not torch.equal(out, images)


def test_noise_has_the_asked_standard_deviation_and_is_seeded() -> None:
    x = torch.full((4, 3, 64, 64), 0.5)  # far from the clamp at 0 and 1
    a = gaussian_noise(x, 0.05, torch.Generator().manual_seed(3))
    b = gaussian_noise(x, 0.05, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert float((a - x).std()) == pytest.approx(0.05, rel=0.03)
    assert abs(float((a - x).mean())) < 0.002


def test_blur_keeps_a_flat_image_and_spreads_a_dot_like_a_gaussian() -> None:
    flat = torch.full((1, 3, 21, 21), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat, atol=1e-6)
    dot = torch.zeros(1, 3, 41, 41)
    dot[..., 20, 20] = 1.0
    blurred = gaussian_blur(dot, 2.0)
    assert float(blurred.sum()) == pytest.approx(3.0, rel=1e-4)  # mass kept, per channel 1
    # Separable Gaussian of std 2: neighbour / centre = exp(-1/(2*4)).
    ratio = float(blurred[0, 0, 20, 21] / blurred[0, 0, 20, 20])
    assert ratio == pytest.approx(np.exp(-1 / 8), rel=1e-4)


def test_brightness_and_contrast_match_pil() -> None:
    pixels = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    x = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    for enhancer, ours in ((ImageEnhance.Brightness, brightness), (ImageEnhance.Contrast,
                                                                   contrast)):
        for factor in (0.5, 1.5):
            expected = torch.from_numpy(np.array(enhancer(image).enhance(factor))).permute(
                2, 0, 1).float() / 255
            # PIL rounds to whole grey levels (and its mean too): within 2 levels.
            assert (ours(x, factor) - expected).abs().max() <= 2.5 / 255


def test_bad_strengths_are_refused() -> None:
    x = _images()
    with pytest.raises(ValueError, match="sigma"):
        gaussian_noise(x, -0.1)
    with pytest.raises(ValueError, match="quality"):
        jpeg(x, 0)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "fog", 1.0)
    with pytest.raises(ValueError, match="shape"):
        gaussian_blur(torch.rand(2, 1, 8, 8), 1.0)


def _former_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """The blur corruption as it was written before it called the project's one blur."""
    import math

    import torch.nn.functional as F

    height, width = images.shape[-2:]
    radius = max(1, min(math.ceil(3 * sigma), height - 1, width - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    horizontal = kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1)
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), horizontal, groups=3)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), vertical, groups=3)
    return out.clamp(0.0, 1.0)


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 24, 40)])
@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0, 4.0])
def test_blur_is_the_project_blur_with_its_former_numbers(
        shape: tuple[int, ...], sigma: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """One Gaussian blur in vitkit (anomaly.maps.gaussian_blur): the corruption calls it,
    with the kernel radius ceil(3 sigma) it always had, and its output stays within 1e-6
    of the former hand-written one (the kernel is now computed in float64)."""
    from vitkit.anomaly import maps

    images = torch.rand(shape, generator=torch.Generator().manual_seed(5))
    expected = _former_blur(images, sigma)
    calls: list[float] = []
    real = maps.gaussian_blur

    def spy(x: torch.Tensor, sigma: float = 4.0, truncate: float = 4.0) -> torch.Tensor:
        calls.append(sigma)
        return real(x, sigma, truncate)

    monkeypatch.setattr(maps, "gaussian_blur", spy)
    blurred = gaussian_blur(images, sigma)
    assert calls == [sigma]
    torch.testing.assert_close(blurred, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(gaussian_blur(images[0], sigma), expected[0], atol=1e-6, rtol=0)
