"""Resolution as a variant option: the model runs on a smaller copy of its input.

A ViT's work grows with its token count, (size / patch)²: at 168 px a ViT-S/14 sees 144 patches
instead of 256. :class:`InputResized` puts an antialiased bilinear resize in front of the
model, so the variant takes the bundle's usual preprocessed input (same transform, same
batches, same service code) and the resize travels inside the exported graph. The cost of
resizing twice (the image to the bundle's size, then to the variant's) is measured by the same
accuracy guard as any other variant (`vitkit quantize --image-size`, `vitkit optimize`).

Works for convolutional networks (global pooling takes any size) and for timm ViTs made with
``dynamic_img_size`` (position embeddings interpolated for the new grid, e.g. the offline
``vit_small_patch14_dinov2``); a ViT with a fixed grid is refused with a clear error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.errors import VitkitError


class InputResized(nn.Module):
    """``model`` on its input resized to ``size`` × ``size`` (antialiased bilinear)."""

    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        self.model = model
        self.size = int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True)
        return self.model(x)


def check_resolution(model: nn.Module, size: int, own_size: int) -> None:
    """A clear error when ``model`` cannot run at ``size`` (ViT with a fixed position grid,
    a size that is not a multiple of the patch, or not smaller than the bundle's own)."""
    if size <= 0 or size >= own_size:
        raise VitkitError(f"--image-size must be smaller than the bundle's input size "
                          f"({own_size} px), not {size}: a smaller input is less work per image.")
    inner = getattr(model, "model", model)
    patch_embed = getattr(inner, "patch_embed", None)
    if patch_embed is None:
        if hasattr(inner, "config") and hasattr(inner.config, "patch_size"):
            raise VitkitError("--image-size: Hugging Face ViTs are not supported; use a timm "
                              "ViT made with dynamic_img_size (e.g. vit_small_patch14_dinov2).")
        return  # a convolutional network: global pooling takes any size
    if not getattr(inner, "dynamic_img_size", False):
        raise VitkitError("--image-size: this ViT has a fixed position grid (it was not created "
                          "with dynamic_img_size), so it cannot run at another size.")
    patch = getattr(patch_embed, "patch_size", (1, 1))
    patch = int(patch[0]) if isinstance(patch, tuple | list) else int(patch)
    if size % patch:
        raise VitkitError(f"--image-size {size} is not a multiple of the ViT's patch size "
                          f"{patch}; try {size - size % patch} or {size - size % patch + patch}.")
