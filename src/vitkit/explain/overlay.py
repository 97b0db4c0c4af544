"""Explanation maps laid over the image the model saw.

The overlay shows the image *as the model saw it*: after the evaluation transform's resize and
centre crop (recovered from the normalised input tensor), so every heat-map pixel lines up
with what the model looked at. Mapping the map back onto the original file would have to
invent values for the borders the crop cut off; the model never saw those.

Maps are upsampled bilinearly (``align_corners=False``: each map cell covers its patch of
pixels), coloured with a matplotlib colormap and blended onto the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vitkit.anomaly.overlay import heatmap_overlay


def model_view(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> Image.Image:
    """The RGB picture behind a normalised input tensor ``(3, H, W)``."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    pixels = (image.detach().float().cpu() * std_t + mean_t).clamp(0, 1)
    array = (pixels.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array)


def upsample_map(amap: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``(h, w)`` map resized bilinearly to ``size`` = ``(height, width)``, float32."""
    values = torch.as_tensor(np.asarray(amap, dtype=np.float32))
    if values.ndim != 2:
        raise ValueError(f"map must have shape (h, w), got {tuple(values.shape)}")
    resized = F.interpolate(values[None, None], size=size, mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()


def peak_location(amap: torch.Tensor | np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    """``(row, column)`` in image pixels where the upsampled map is highest."""
    upsampled = upsample_map(amap, size)
    row, column = np.unravel_index(int(np.argmax(upsampled)), upsampled.shape)
    return int(row), int(column)


def overlay_map(image: Image.Image, amap: torch.Tensor | np.ndarray, cmap: str = "jet",
                alpha: float = 0.5) -> Image.Image:
    """``image`` with a ``[0, 1]`` map, upsampled to its size, blended on top (RGB)."""
    upsampled = upsample_map(amap, (image.height, image.width))
    return heatmap_overlay(image, upsampled, 0.0, 1.0, alpha=alpha, cmap=cmap)
