"""Synthetic anomalies made from normal images, to choose settings without labelled defects.

Each normal image gives one local defect (a small region changed: a patch cut from elsewhere
and pasted, a thin scar, a patch of noise, a flat colour patch) and one global change (lower
contrast, blur, a finer texture, a colour cast). They are made on the prepared (normalised)
input tensor, so they cost no decoding. A setting that scores its own out-of-fold normal
images below these synthetic defects is one that separates normal from changed; which
settings win on real defects is then measured on sets the recipe was not designed on (README).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from vitkit.anomaly.maps import gaussian_blur

LOCAL_KINDS: tuple[str, ...] = ("cut-paste", "scar", "noise", "colour")
GLOBAL_KINDS: tuple[str, ...] = ("contrast", "blur", "texture-scale", "colour-cast")


def _box(rng: random.Random, height: int, width: int, low: float, high: float
         ) -> tuple[int, int, int, int]:
    side_h = max(2, int(height * rng.uniform(low, high)))
    side_w = max(2, int(width * rng.uniform(low, high)))
    top, left = rng.randrange(0, height - side_h + 1), rng.randrange(0, width - side_w + 1)
    return top, left, side_h, side_w


def local_defect(image: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """A copy of ``image`` (C, H, W) with one small region changed."""
    out = image.clone()
    _, height, width = image.shape
    kind = rng.choice(LOCAL_KINDS)
    top, left, side_h, side_w = _box(rng, height, width, 0.06, 0.16)
    region = out[:, top:top + side_h, left:left + side_w]
    if kind == "cut-paste":
        src_top = rng.randrange(0, height - side_h + 1)
        src_left = rng.randrange(0, width - side_w + 1)
        patch = image[:, src_top:src_top + side_h, src_left:src_left + side_w]
        region.copy_(patch.flip(-1) if rng.random() < 0.5 else patch)
        region.mul_(rng.uniform(0.7, 1.3))  # a little brighter or darker than where it came from
    elif kind == "scar":
        thickness = max(1, height // 64)
        vertical = rng.random() < 0.5
        length_box = region[:, :, :thickness] if vertical else region[:, :thickness, :]
        length_box.fill_(rng.uniform(-2.0, 2.0))
    elif kind == "noise":
        generator = torch.Generator().manual_seed(rng.randrange(1 << 30))
        region.add_(torch.randn(region.shape, generator=generator))
    else:
        colour = torch.tensor([rng.uniform(-2.0, 2.0) for _ in range(image.shape[0])])
        region.copy_(colour.view(-1, 1, 1).expand_as(region))
    return out


def global_defect(image: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """A copy of ``image`` (C, H, W) changed everywhere a little."""
    kind = rng.choice(GLOBAL_KINDS)
    mean = image.mean(dim=(1, 2), keepdim=True)
    if kind == "contrast":
        return mean + (image - mean) * rng.uniform(0.5, 0.7)
    if kind == "blur":
        sigma = rng.uniform(1.5, 2.5)
        # Each channel as one map, with a kernel radius of int(3 sigma) (ceil of the truncate
        # times sigma), as when the README's figures were measured.
        return gaussian_blur(image, sigma, truncate=(int(3 * sigma) - 0.5) / sigma)
    if kind == "texture-scale":  # the same texture, finer: the image shrunk and tiled
        _, height, width = image.shape
        factor = rng.uniform(0.6, 0.75)
        small = F.interpolate(image[None], scale_factor=factor, mode="bilinear",
                              align_corners=False, antialias=True)[0]
        reps_h, reps_w = -(-height // small.shape[1]), -(-width // small.shape[2])
        return small.repeat(1, reps_h, reps_w)[:, :height, :width].contiguous()
    cast = torch.tensor([rng.uniform(-0.4, 0.4) for _ in range(image.shape[0])])
    return image + cast.view(-1, 1, 1)


def synthetic_defects(batch: torch.Tensor, indices: list[int], seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(local, global) defect versions of a batch of prepared normal images; image ``i``'s
    defects depend only on ``seed`` and ``i``."""
    local, overall = [], []
    for image, index in zip(batch, indices, strict=True):
        rng = random.Random(seed * 1_000_003 + index)
        local.append(local_defect(image, rng))
        overall.append(global_defect(image, rng))
    return torch.stack(local), torch.stack(overall)
