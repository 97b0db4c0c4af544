"""Backbones: timm, Hugging Face and local weights behind one classifier interface."""

from vitkit.backbones.factory import (
    BackboneSpec,
    CreatedModel,
    check_model_name,
    create,
    rebuild,
)
from vitkit.backbones.model import ImageClassifier
from vitkit.backbones.weights import OFFLINE_REGISTRY, read_state_dict

__all__ = [
    "OFFLINE_REGISTRY",
    "BackboneSpec",
    "CreatedModel",
    "check_model_name",
    "ImageClassifier",
    "create",
    "read_state_dict",
    "rebuild",
]
