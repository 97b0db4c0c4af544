"""Backbones: timm, Hugging Face and local weights behind one classifier interface."""

from vitkit.backbones.factory import BackboneSpec, CreatedModel, create, rebuild
from vitkit.backbones.model import ImageClassifier
from vitkit.backbones.weights import OFFLINE_REGISTRY, read_state_dict

__all__ = [
    "OFFLINE_REGISTRY",
    "BackboneSpec",
    "CreatedModel",
    "ImageClassifier",
    "create",
    "read_state_dict",
    "rebuild",
]
