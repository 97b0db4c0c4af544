"""Images to the canvas the patch-mean baseline works on: working size and brightness channels.

Two decisions live here.

**Working size.** Every image is resized (never cropped) to one size (H, W) chosen from the
normal set: its most common native size, shrunk only if the long side exceeds ``max_side``, then
rounded to multiples of the patch size. A 1024x768 canvas therefore stays 1024x768 and a 3-pixel
dot keeps its pixels; a 250x250 texture becomes 256x256 rather than being blown up 4x. Images of
another size are stretched to the working size, so the right and bottom remainder that does not
fill a patch is never dropped.

**Channels.** Standard greyscale (ITU-R BT.601 luma 0.299 R + 0.587 G + 0.114 B) hides colour:
a saturated blue dot (0, 0, 255) has luma 29, the same as a dark background. The canvas has two
channels instead:

- ``rgb_max`` (channel 0) = max(R, G, B), the HSV "value": any bright dot shows at full
  strength whatever its hue (pure blue, red or white all give 255).
- ``rgb_min`` (channel 1) = min(R, G, B): any dark mark shows at full strength on a bright
  background, even one that keeps a channel saturated (yellow on white has min 0, max 255).

For a grey image both channels equal the grey level. What they cannot see is a change of hue at
equal brightest and darkest channel (e.g. pure red turning pure green).

Resampling uses PIL's box filter on float32 channels: when shrinking, each output pixel is the
area average of the input, so a small bright spot keeps its energy (integrated brightness);
when enlarging it replicates pixels, so a one-pixel dot keeps its peak value.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

DEFAULT_MAX_SIDE = 1024
CANVAS_CHANNELS = ("rgb_max", "rgb_min")


def working_size(
    sizes: Sequence[tuple[int, int]],
    patch_size: int,
    max_side: int = DEFAULT_MAX_SIDE,
    resolution: int | None = None,
) -> tuple[int, int]:
    """The one (H, W) every image is resized to, with sides multiples of ``patch_size``.

    Starts from the most common native size among ``sizes`` (ties go to the larger area, so the
    choice does not depend on the order of the files), scales it keeping the aspect ratio so that
    its long side is ``resolution`` if given, otherwise at most ``max_side``, then rounds each
    side to the nearest multiple of ``patch_size`` (at least one patch, never above
    ``max_side`` or ``resolution``).

    Args:
        sizes: PIL (width, height) of the normal images.
        patch_size: P, the side of a patch in working pixels.
        max_side: Largest long side when ``resolution`` is None.
        resolution: Forces the long side; must be a multiple of ``patch_size``.

    Returns:
        (H, W), both multiples of ``patch_size``.
    """
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
    if not sizes:
        raise ValueError("working_size needs the sizes of the normal images, got none")
    bad = [s for s in sizes if len(s) != 2 or min(s) < 1]
    if bad:
        raise ValueError(f"sizes must be PIL (width, height) pairs of positive ints, got {bad[:3]}")
    if resolution is not None and (resolution < patch_size or resolution % patch_size):
        raise ValueError(
            f"resolution must be a positive multiple of patch_size={patch_size}, got "
            f"{resolution}; use e.g. {max(round(resolution / patch_size), 1) * patch_size}"
        )
    if resolution is None and max_side < patch_size:
        raise ValueError(f"max_side={max_side} is smaller than patch_size={patch_size}")

    counts = Counter((int(w), int(h)) for w, h in sizes)
    width, height = max(counts, key=lambda s: (counts[s], s[0] * s[1], s))
    long_side = max(width, height)
    target = resolution if resolution is not None else min(long_side, max_side)
    scale = target / long_side
    # Patches per side never exceed the cap, so rounding cannot push the long side above it.
    limit = max((resolution if resolution is not None else max_side) // patch_size, 1)

    def patches(side: int) -> int:
        # Half up, not Python's round-half-to-even, so 12.5 patches become 13 like 13.5 become 14.
        return min(max(math.floor(side * scale / patch_size + 0.5), 1), limit)

    return patches(height) * patch_size, patches(width) * patch_size


def to_canvas(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """An image as the float32 canvas (2, H, W) in [0, 1]: ``rgb_max`` and ``rgb_min``.

    Args:
        image: Any PIL image; converted to RGB first (greyscale gives two equal channels).
        size: Working (H, W), e.g. from :func:`working_size`.

    Returns:
        Tensor (2, H, W): channel 0 = max over R, G, B; channel 1 = min over R, G, B; box-resized
        to ``size`` without cropping.
    """
    if not isinstance(image, Image.Image):
        raise ValueError(f"to_canvas expects a PIL image, got {type(image).__name__}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be a working (H, W) of positive ints, got {size!r}")
    height, width = int(size[0]), int(size[1])
    rgb = np.asarray(image.convert("RGB"))  # (h, w, 3) uint8
    # The channel reduction comes before resizing so a small coloured dot is judged by its
    # brightest channel at native resolution, not after being averaged with its neighbours.
    channels = [
        resize_channel(reduced.astype(np.float32) * (1.0 / 255.0), (height, width))
        for reduced in (channel_extreme(rgb, np.maximum), channel_extreme(rgb, np.minimum))
    ]
    return torch.from_numpy(np.stack(channels))


def to_canvases(images: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """:func:`to_canvas` over a batch: tensor (B, 2, H, W)."""
    if not images:
        raise ValueError("to_canvases needs at least one image")
    # numpy stacks the views of the per-image tensors; torch.stack was 20x slower on a busy
    # 2-core machine (OpenMP threads contending for a plain copy).
    return torch.from_numpy(np.stack([to_canvas(image, size).numpy() for image in images]))


def channel_extreme(rgb: np.ndarray, extreme: np.ufunc) -> np.ndarray:
    """Element-wise max or min of the R, G, B planes of (h, w, 3): (h, w), same dtype.

    Two pairwise ufunc calls on the planes are ~20x faster than ``rgb.max(axis=2)``, which
    reduces along the short, innermost axis.
    """
    return extreme(extreme(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def resize_channel(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Box-resizes one float32 channel (h, w) to ``size`` (H, W); a no-op at the same size."""
    if channel.shape == tuple(size):
        return np.ascontiguousarray(channel)
    resized = Image.fromarray(channel).resize((size[1], size[0]), Image.Resampling.BOX)
    return np.asarray(resized, dtype=np.float32)
