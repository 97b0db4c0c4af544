"""The anomaly methods as strategy classes over the pure math modules, one module per method
(as anomalib keeps each model together): :mod:`.patchmean`, :mod:`.patchcore`, :mod:`.padim`,
on the interface of :mod:`.base`.

``DEEP_METHODS`` is the one table of the methods on backbone features; the fitting code builds
from it and :func:`restore_deep` rebuilds a fitted one from a bundle. PatchMean needs no
backbone and is built and restored on its own (:meth:`PatchMeanMethod.restore`).
"""

from __future__ import annotations

from typing import Any

import torch

from vitkit.anomaly.features import FeatureExtractor
from vitkit.anomaly.methods.base import (
    AnomalyMethod,
    DeepMethod,
    Embedding,
    Progress,
    select_images,
)
from vitkit.anomaly.methods.padim import PadimMethod
from vitkit.anomaly.methods.patchcore import PatchCoreMethod
from vitkit.anomaly.methods.patchmean import PatchMeanMethod
from vitkit.data import Preprocessing

__all__ = ["DEEP_METHODS", "AnomalyMethod", "DeepMethod", "Embedding", "PadimMethod",
           "PatchCoreMethod", "PatchMeanMethod", "Progress", "restore_deep", "select_images"]

DEEP_METHODS: dict[str, type[PatchCoreMethod] | type[PadimMethod]] = {
    PatchCoreMethod.name: PatchCoreMethod,
    PadimMethod.name: PadimMethod,
}


def restore_deep(name: str, options: dict[str, Any], tensors: dict[str, torch.Tensor],
                 extractor: FeatureExtractor, preprocessing: Preprocessing,
                 device: torch.device) -> DeepMethod:
    """Rebuilds a fitted PatchCore or PaDiM from a bundle's options and tensors."""
    if name not in DEEP_METHODS:
        raise ValueError(f"unknown deep anomaly method {name!r}")
    return DEEP_METHODS[name].restore(options, tensors, extractor, preprocessing, device)
