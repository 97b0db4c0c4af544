"""Computing backbone features once, so a head-only stage costs one forward pass over the data."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from vitkit.backbones import ImageClassifier


@torch.no_grad()
def extract_features(
    model: ImageClassifier,
    loader: DataLoader,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (features (N, D) float32 on CPU, labels (N,) int64) in loader order."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for images, targets in loader:
            feats.append(model.forward_features(images.to(device)).float().cpu())
            labels.append(targets)
            if on_batch is not None:
                on_batch(len(targets))
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(labels)
