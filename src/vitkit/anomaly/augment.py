"""More normal images from few: flipped and rotated copies of each prepared image.

For parts and textures that look the same mirrored or turned (circuit boards, paper, fabric),
the copies show the model patches it would otherwise meet only at scoring time; with one to
eight normal images that is most of what it can learn. Objects with an up and a down (a
bottle, a screw head with its shadow) should not use them: a flipped normal part is not a
normal part. The copies are made from the prepared (square) input tensor.
"""

from __future__ import annotations

import torch

AUGMENTATIONS: tuple[str, ...] = ("none", "flips", "dihedral")


def n_copies(mode: str) -> int:
    """Copies per image, the image itself included."""
    return {"none": 1, "flips": 4, "dihedral": 8}[mode]


def with_copies(batch: torch.Tensor, mode: str) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B * n_copies, C, H, W)``, each image followed by its copies:
    ``flips``: horizontal, vertical and both; ``dihedral``: the four rotations by 90 degrees
    of the image and of its mirror image (needs ``H == W``)."""
    if mode == "none":
        return batch
    if mode == "flips":
        views = [batch, batch.flip(-1), batch.flip(-2), batch.flip(-1, -2)]
    elif mode == "dihedral":
        if batch.shape[-1] != batch.shape[-2]:
            raise ValueError("dihedral copies need square inputs")
        mirrored = batch.flip(-1)
        views = [torch.rot90(image, turns, dims=(-2, -1))
                 for image in (batch, mirrored) for turns in range(4)]
    else:
        raise ValueError(f"unknown augmentation {mode!r}; choose from {', '.join(AUGMENTATIONS)}")
    return torch.stack(views, dim=1).reshape(-1, *batch.shape[1:])
