"""The segmentation loss: Dice + cross-entropy, half each.

Cross-entropy alone learns the background first and a thin object late (its pixels are a
small share of the sum); Dice scores each class by its overlap whatever its size, but gives
noisy gradients on its own at the start. Their sum is the usual recipe (nnU-Net,
smp's examples). Pixels marked ``ignore_index`` (255, Pascal VOC's boundary mark) count in
neither.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.data.masks import IGNORE_INDEX


class DiceCELoss(nn.Module):
    """``dice_weight * Dice + ce_weight * cross-entropy`` over logits ``(B, C, H, W)`` and
    class indices ``(B, H, W)``."""

    def __init__(self, dice_weight: float = 0.5, ce_weight: float = 0.5,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss

        self.dice_weight, self.ce_weight, self.ignore_index = dice_weight, ce_weight, ignore_index
        self.dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not bool((target != self.ignore_index).any()):  # cross-entropy would be 0/0
            return logits.sum() * 0.0
        ce = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index)
        return self.dice_weight * self.dice(logits.float(), target) + self.ce_weight * ce
