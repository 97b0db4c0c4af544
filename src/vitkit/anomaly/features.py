"""Feature maps from the middle of a backbone, for PaDiM and PatchCore.

A CNN gives maps of decreasing size from its stages; a ViT gives a grid of patch tokens after
each block (the class and register tokens dropped). Either way the extractor returns a list of
``(B, C, h, w)`` tensors, largest grid first, so the anomaly math never needs to know which
family it is looking at.

Layers are indices into timm's ``forward_intermediates`` numbering: a CNN's feature stages
(``feature_info``, e.g. strides 2, 4, 8, 16, 32 for efficientnet_lite0) or a ViT's blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vitkit.backbones import BackboneSpec, ImageClassifier, create, rebuild
from vitkit.data import Preprocessing
from vitkit.errors import ConfigError

# Strides the PatchCore and PaDiM papers take from a ResNet: mid-level features, local
# enough to place a defect and abstract enough to ignore pixel noise.
_CNN_STRIDES = {"patchcore": (8, 16), "padim": (4, 8, 16)}
# For ViTs (one grid size for every block): fractions of the depth.
_VIT_DEPTH_FRACTIONS = {"patchcore": (1 / 3, 2 / 3), "padim": (1 / 4, 1 / 2, 3 / 4)}


class FeatureExtractor(nn.Module):
    """A backbone cut after the chosen layers: ``images -> [maps (B, C_i, h_i, w_i), ...]``.

    Args:
        classifier: The backbone (its head is never run).
        layers: Stage indices (CNN) or block indices (ViT) in timm's numbering.
        input_size: Model input (height, width); needed to lay Hugging Face tokens on a grid.
    """

    def __init__(self, classifier: ImageClassifier, layers: Sequence[int],
                 input_size: tuple[int, int]) -> None:
        super().__init__()
        self.classifier = classifier
        self.layers = [int(i) for i in layers]
        self.input_size = input_size
        if classifier.source == "timm":
            # Drops the blocks after the last layer and the head: smaller bundles, faster scoring.
            classifier.model.prune_intermediate_layers(  # type: ignore[operator]
                self.layers, prune_norm=True, prune_head=True
            )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.classifier.source == "timm":
            maps = self.classifier.model.forward_intermediates(  # type: ignore[operator]
                images, indices=self.layers, intermediates_only=True
            )
        else:
            maps = self._hf_maps(images)
        maps = [m.float() for m in maps]
        # Largest grid first: the anomaly math aligns every map to the first one.
        return sorted(maps, key=lambda m: -m.shape[-1] * m.shape[-2])

    def _hf_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        outputs = self.classifier.model(pixel_values=images, output_hidden_states=True)
        hidden = outputs.hidden_states
        return [_as_grid(hidden[i + 1], self.input_size) for i in self.layers]


def _as_grid(hidden: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """A Hugging Face hidden state as (B, C, h, w): CNN maps as they are, tokens on their grid."""
    if hidden.dim() == 4:
        return hidden
    batch, n_tokens, channels = hidden.shape
    height, width = input_size
    for patch in (8, 14, 16, 32):
        grid_h, grid_w = height // patch, width // patch
        prefix = n_tokens - grid_h * grid_w
        if 0 <= prefix <= 8 and height % patch == 0 and width % patch == 0:
            tokens = hidden[:, prefix:, :]
            return tokens.transpose(1, 2).reshape(batch, channels, grid_h, grid_w)
    raise ConfigError(f"cannot lay {n_tokens} tokens of a {height}x{width} input on a grid; "
                      "this Hugging Face model is not supported for anomaly features.")


@dataclass
class FeatureBackbone:
    """The extractor plus what a bundle must record to rebuild it."""

    extractor: FeatureExtractor
    spec: BackboneSpec
    preprocessing: Preprocessing


def default_layers(classifier: ImageClassifier, method: str) -> list[int]:
    """The layers PaDiM / PatchCore use by default for this backbone."""
    if classifier.source == "hf":
        n_layers = int(getattr(classifier.model.config, "num_hidden_layers", 12))
        return _depth_fractions(n_layers, method)
    model = classifier.model
    info = getattr(model, "feature_info", None)
    reductions = [int(f["reduction"]) for f in info] if info is not None else []
    if reductions and len(set(reductions)) > 1:  # a CNN: pick stages by stride
        wanted = _CNN_STRIDES[method]
        chosen = [i for i, r in enumerate(reductions) if r in wanted]
        if len(chosen) == len(wanted):
            return chosen
        middle = len(reductions) // 2
        return list(range(max(0, middle - len(wanted) + 1), middle + 1))
    n_blocks = len(getattr(model, "blocks", [])) or len(reductions)
    if n_blocks == 0:
        raise ConfigError(f"cannot find feature stages or blocks in {type(model).__name__}; "
                          "give --layers explicitly.")
    return _depth_fractions(n_blocks, method)


def _depth_fractions(n_blocks: int, method: str) -> list[int]:
    layers = [min(n_blocks - 1, max(0, round(f * n_blocks))) for f in _VIT_DEPTH_FRACTIONS[method]]
    return sorted(set(layers))


def anomaly_preprocessing(pre: Preprocessing, image_size: int | None) -> Preprocessing:
    """The backbone's normalisation on the whole image, squashed to the input size: no crop,
    so a defect at the border is never cut away."""
    size = (image_size, image_size) if image_size else pre.input_size
    return pre.model_copy(update={"input_size": size, "crop_pct": 1.0, "crop_mode": "squash"})


def build_feature_backbone(name: str, weights: str, method: str, layers: Sequence[int] | None,
                           image_size: int | None) -> tuple[FeatureBackbone, list[int]]:
    """Creates a pretrained backbone and cuts it at the method's layers."""
    created = create(name, num_classes=1, weights=weights)
    chosen = list(layers) if layers else default_layers(created.model, method)
    _check_layers(created.model, chosen)
    pre = anomaly_preprocessing(created.preprocessing, image_size)
    if image_size and created.model.has_fixed_input_size and tuple(pre.input_size) != tuple(
            created.preprocessing.input_size):
        raise ConfigError(f"{name} is a ViT with a fixed input size of "
                          f"{created.preprocessing.input_size[0]} px; leave --image-size out "
                          "(ViTs created with dynamic_img_size, such as the offline "
                          "vit_small_patch14_dinov2, take any size).")
    extractor = FeatureExtractor(created.model, chosen, tuple(pre.input_size))  # type: ignore[arg-type]
    return FeatureBackbone(extractor.eval(), created.spec, pre), chosen


def rebuild_feature_backbone(spec: BackboneSpec, layers: Sequence[int],
                             input_size: tuple[int, int]) -> FeatureExtractor:
    """The same extractor as :func:`build_feature_backbone`, without weights (load them next)."""
    classifier = rebuild(spec, num_classes=1)
    return FeatureExtractor(classifier, layers, input_size).eval()


def _is_vit(classifier: ImageClassifier) -> bool:
    return classifier.source == "timm" and classifier.is_token_model


def _check_layers(classifier: ImageClassifier, layers: Sequence[int]) -> None:
    if classifier.source == "hf":
        available = int(getattr(classifier.model.config, "num_hidden_layers", 0)) or None
    else:
        info = getattr(classifier.model, "feature_info", None)
        available = len(getattr(classifier.model, "blocks", [])) if _is_vit(classifier) else (
            len(info) if info is not None else None)
    if not layers:
        raise ConfigError("--layers needs at least one layer index.")
    if available is not None and any(not 0 <= i < available for i in layers):
        raise ConfigError(f"layer indices {list(layers)} are out of range: this backbone has "
                          f"{available} feature layers (0..{available - 1}).")
