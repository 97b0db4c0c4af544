"""Bundles changed for a test."""

from __future__ import annotations

from pathlib import Path

import torch

from vitkit.backbones import BackboneSpec, rebuild
from vitkit.bundle import WEIGHTS_FILE, load_weights, read_meta, save_weights


def sharpened(bundle: Path, factor: float) -> Path:
    """Multiplies the head's weights and bias: the logits grow by ``factor`` (the tiny test
    models have nearly flat logits, too flat for a temperature within the searched range)."""
    meta = read_meta(bundle)
    model = rebuild(BackboneSpec.from_dict(meta.backbone), num_classes=len(meta.labels))
    load_weights(bundle, model.model)
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.mul_(factor)
    save_weights(model.model, bundle / WEIGHTS_FILE)
    return bundle
