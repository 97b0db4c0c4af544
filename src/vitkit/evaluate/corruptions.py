"""Common image corruptions at graded severities: pixel tensors in ``[0, 1]`` in, same out.

Each corruption takes a ``(B, 3, H, W)`` or ``(3, H, W)`` float tensor of pixels in ``[0, 1]``
(the model's input *before* normalisation, already resized and cropped) and returns a tensor of
the same shape and range. Severities are in the units of each corruption:

========== ===================================== ===================== =============
name        severity                              defaults              identity at
========== ===================================== ===================== =============
noise       std of additive Gaussian noise, [0,1] 0.02, 0.05, 0.1, 0.2  0
blur        Gaussian blur std in pixels           1, 2, 4               0
jpeg        JPEG quality (PIL round trip)         75, 50, 25, 10        (100: nearly)
brightness  factor on every pixel                 0.5, 1.5              1
contrast    factor on the distance to the mean    0.5, 1.5              1
========== ===================================== ===================== =============

Noise is the only random corruption; it draws from the ``generator`` given, so a seeded
generator makes a measurement repeatable.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vitkit.anomaly import maps

# ITU-R BT.601 luma, as PIL's "L" conversion (ImageEnhance.Contrast uses that mean).
_LUMA = (0.299, 0.587, 0.114)


def gaussian_noise(images: torch.Tensor, sigma: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Adds ``N(0, sigma^2)`` noise to every pixel and channel, then clamps to ``[0, 1]``."""
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return images.clone()
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype,
                        device=images.device if generator is None else generator.device)
    return (images + sigma * noise.to(images.device)).clamp(0.0, 1.0)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of std ``sigma`` pixels (kernel radius ``ceil(3 sigma)``,
    reflected borders): the project's one blur, :func:`vitkit.anomaly.maps.gaussian_blur`,
    on each channel. Where an image side is at most ``ceil(3 sigma)`` pixels the kernel is
    shortened on that axis only (it used to be shortened on both)."""
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return images.clone()
    batch = _as_batch(images)
    b, c, height, width = batch.shape
    blurred = maps.gaussian_blur(batch.reshape(b * c, height, width), sigma, truncate=3.0)
    return blurred.clamp(0.0, 1.0).reshape(images.shape)


def jpeg(images: torch.Tensor, quality: float) -> torch.Tensor:
    """Encodes each image as a JPEG of ``quality`` (1..100) with PIL and decodes it again."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    batch = _as_batch(images)
    decoded = []
    for image in batch:
        pixels = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(buffer, format="JPEG",
                                                              quality=int(round(quality)))
        buffer.seek(0)
        with Image.open(buffer) as reloaded:
            array = np.asarray(reloaded.convert("RGB"), dtype=np.uint8)
        decoded.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
    out = torch.stack(decoded).to(images.device, images.dtype) / 255.0
    return out.reshape(images.shape)


def brightness(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiplies every pixel by ``factor`` (as ``PIL.ImageEnhance.Brightness``)."""
    if factor < 0:
        raise ValueError(f"brightness factor must be >= 0, got {factor}")
    return (images * factor).clamp(0.0, 1.0)


def contrast(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Scales each image's distance to its mean grey level by ``factor`` (as
    ``PIL.ImageEnhance.Contrast``)."""
    if factor < 0:
        raise ValueError(f"contrast factor must be >= 0, got {factor}")
    batch = _as_batch(images)
    luma = torch.tensor(_LUMA, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    mean = (batch * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)  # (B,1,1,1)
    return (mean + factor * (batch - mean)).clamp(0.0, 1.0).reshape(images.shape)


@dataclass(frozen=True)
class Corruption:
    """One corruption family: how to apply it, its default severities and its unit."""

    name: str
    apply: Callable[[torch.Tensor, float, torch.Generator | None], torch.Tensor]
    severities: tuple[float, ...]
    unit: str


CORRUPTIONS: dict[str, Corruption] = {
    "noise": Corruption("noise", gaussian_noise, (0.02, 0.05, 0.1, 0.2), "sigma ([0,1] pixels)"),
    "blur": Corruption("blur", lambda x, s, _g: gaussian_blur(x, s), (1.0, 2.0, 4.0),
                       "sigma (px)"),
    "jpeg": Corruption("jpeg", lambda x, q, _g: jpeg(x, q), (75, 50, 25, 10), "quality"),
    "brightness": Corruption("brightness", lambda x, f, _g: brightness(x, f), (0.5, 1.5),
                             "factor"),
    "contrast": Corruption("contrast", lambda x, f, _g: contrast(x, f), (0.5, 1.5), "factor"),
}


def corrupt(images: torch.Tensor, name: str, severity: float,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Applies the corruption ``name`` (a key of :data:`CORRUPTIONS`) at ``severity``."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name].apply(images, severity, generator)


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 3:
        return images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W) or (3, H, W), got "
                         f"{tuple(images.shape)}")
    return images
