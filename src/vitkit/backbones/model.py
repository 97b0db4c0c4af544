"""One interface over timm and Hugging Face image classifiers.

Training, distillation, feature caching, OOD and explanations all stand on this wrapper:
``forward`` gives logits, ``forward_features`` gives the pre-logits embedding, ``forward_head``
maps an embedding to logits, and ``layer_groups`` lists the body's parameters from input to
output for staged fine-tuning and layer-wise learning-rate decay.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from torch import nn

Source = Literal["timm", "hf"]


class ImageClassifier(nn.Module):
    """A backbone plus its classification head, whatever library built it."""

    def __init__(self, model: nn.Module, source: Source) -> None:
        super().__init__()
        self.model = model
        self.source: Source = source

    @property
    def head(self) -> nn.Module:
        """The classification head; both heads of a distilled DeiT (class and distillation
        token), whose ``get_classifier()`` is a tuple."""
        if self.source == "timm":
            classifier = self.model.get_classifier()  # type: ignore[operator]
            return nn.ModuleList(classifier) if isinstance(classifier, tuple) else classifier
        return self.model.classifier  # type: ignore[return-value]

    @property
    def num_features(self) -> int:
        """Width of the pre-logits embedding (``forward_features``). timm's own
        ``num_features`` is the width before a pre-logits layer, which MobileNetV3 has
        (576 -> 1024): ``head_hidden_size`` is the embedding's."""
        if self.source == "timm":
            width = getattr(self.model, "head_hidden_size", None) or self.model.num_features
            return int(width)  # type: ignore[arg-type]
        linear = _last_linear(self.head)
        return int(linear.in_features)

    @property
    def is_token_model(self) -> bool:
        """A transformer on patch tokens: every feature level has the same stride."""
        if self.source == "hf":
            return True
        info = getattr(self.model, "feature_info", None)
        if not info:
            return False
        return len({int(f["reduction"]) for f in info}) == 1

    @property
    def has_fixed_input_size(self) -> bool:
        """True for transformers whose position embeddings fix the input size; CNNs, and timm
        ViTs made with ``dynamic_img_size`` (the position grid is interpolated at run time),
        take any size."""
        return self.is_token_model and not getattr(self.model, "dynamic_img_size", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.source == "timm":
            return self.model(x)
        return self.model(pixel_values=x).logits

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logits embedding, (B, num_features)."""
        if self.source == "timm":
            feats = self.model.forward_features(x)  # type: ignore[operator]
            return self.model.forward_head(feats, pre_logits=True)  # type: ignore[operator]
        # Hugging Face models differ in how they pool; the classifier's input is, by
        # definition, the pre-logits embedding, so capture it instead of re-deriving it.
        captured: list[torch.Tensor] = []
        handle = self.head.register_forward_hook(lambda _m, inp, _o: captured.append(inp[0]))
        try:
            self.model(pixel_values=x)
        finally:
            handle.remove()
        return captured[0].flatten(1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-logits embedding (B, num_features) and logits from one backbone pass. The
        logits are the model's own (a distilled DeiT averages two heads over two tokens, which
        no single head on the pooled embedding reproduces)."""
        if self.source == "timm":
            tokens = self.model.forward_features(x)  # type: ignore[operator]
            features = self.model.forward_head(tokens, pre_logits=True)  # type: ignore[operator]
            return features, self.model.forward_head(tokens)  # type: ignore[operator]
        captured: list[torch.Tensor] = []
        handle = self.head.register_forward_hook(lambda _m, inp, _o: captured.append(inp[0]))
        try:
            logits = self.model(pixel_values=x).logits
        finally:
            handle.remove()
        return captured[0].flatten(1), logits

    def head_parameter_names(self) -> set[str]:
        head_ids = {id(p) for p in self.head.parameters()}
        return {n for n, p in self.model.named_parameters() if id(p) in head_ids}

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The body's parameters in groups ordered from input to output; the head excluded."""
        head_ids = {id(p) for p in self.head.parameters()}
        named = [(n, p) for n, p in self.model.named_parameters() if id(p) not in head_ids]
        group_matcher = getattr(self.model, "group_matcher", None)
        if self.source == "timm" and callable(group_matcher):
            from timm.models import group_parameters

            by_name = dict(named)
            groups = group_parameters(self.model, group_matcher(coarse=False))
            ordered = [[by_name[n] for n in names if n in by_name] for names in groups.values()]
            return [g for g in ordered if g]
        return _groups_by_block_index(named)


def _last_linear(module: nn.Module) -> nn.Linear:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"cannot find a Linear layer in the classifier {type(module).__name__}")
    return linears[-1]


_BLOCK_INDEX = re.compile(r"\.(?:layer|layers|blocks|block|stages|stage)\.(\d+)\.")


def _groups_by_block_index(named: list[tuple[str, nn.Parameter]]) -> list[list[nn.Parameter]]:
    """Groups Hugging Face parameters by their block number: embeddings, block 0..N-1, the rest."""
    indices = [_BLOCK_INDEX.search("." + name) for name, _ in named]
    n_blocks = 1 + max((int(m.group(1)) for m in indices if m), default=-1)
    groups: list[list[nn.Parameter]] = [[] for _ in range(n_blocks + 2)]
    seen_block = False
    for (_name, param), match in zip(named, indices, strict=True):
        if match:
            seen_block = True
            groups[1 + int(match.group(1))].append(param)
        else:
            groups[-1 if seen_block else 0].append(param)
    return [g for g in groups if g]
