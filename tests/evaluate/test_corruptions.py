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
