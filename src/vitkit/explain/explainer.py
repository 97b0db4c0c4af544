"""Heat maps for a batch of preprocessed images: Grad-CAM, Grad-CAM++, attention rollout.

:class:`Explainer` resolves the method and the target layer once for a model, then maps any
number of batches. Maps come back at the model's resolution (the feature-map or patch grid),
each scaled to ``[0, 1]``; :mod:`vitkit.explain.overlay` lays them over the images.

Methods:
    ``gradcam`` / ``gradcam++``: class-specific, any CNN or transformer (on a transformer the
    target layer's patch tokens are laid on their grid). Needs gradients, hence a torch model.
    ``rollout``: attention rollout through all layers (transformers only; class-agnostic).
    ``attn-last``: the last layer's class-token attention (transformers only; class-agnostic).
    ``auto``: ``rollout`` for transformers, ``gradcam`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vitkit.backbones import ImageClassifier
from vitkit.errors import ConfigError, VitkitError
from vitkit.explain.gradcam import gradcam, gradcam_plus_plus, normalize_maps, tokens_to_grid
from vitkit.explain.rollout import (
    DEFAULT_HEAD_FUSION,
    HEAD_FUSIONS,
    HeadFusion,
    last_layer_relevance,
    relevance_to_grid,
    rollout_relevance,
)
from vitkit.explain.targets import (
    capture_attention,
    default_target_layer,
    is_transformer,
    resolve_layer,
    token_layout,
)

METHODS = ("auto", "gradcam", "gradcam++", "rollout", "attn-last")
GRADIENT_METHODS = ("gradcam", "gradcam++")
ATTENTION_METHODS = ("rollout", "attn-last")


@dataclass
class BatchExplanation:
    """Maps and the predictions they explain, float32 on the CPU.

    Attributes:
        maps: ``(B, h, w)`` in ``[0, 1]``, at the model's resolution.
        logits: ``(B, classes)`` of the explained pass.
        targets: ``(B,)`` the class each map explains (by default the predicted one).
    """

    maps: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor

    @property
    def probs(self) -> torch.Tensor:
        """Softmax of the logits (uncalibrated; a Predictor's ``probabilities`` applies the
        bundle's temperature)."""
        return self.logits.softmax(dim=1)


def choose_method(model: ImageClassifier, method: str) -> str:
    """The concrete method for ``method`` (resolving ``auto``) on this model.

    Raises:
        ConfigError: For an unknown method, or an attention method on a model without attention.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown explanation method {method!r}; use one of "
                          f"{', '.join(METHODS)} (or a feature view: filters, features).")
    transformer = is_transformer(model)
    if method == "auto":
        return "rollout" if transformer else "gradcam"
    if method in ATTENTION_METHODS and not transformer:
        raise ConfigError(f"--method {method} reads attention weights, and this model has no "
                          "attention layers (it is a CNN). Use --method gradcam or gradcam++.")
    return method


class Explainer:
    """Explains batches of one model with one method (see the module doc).

    Args:
        model: The torch classifier (its fp32 weights: explanations need gradients or
            attention weights, which exported runtimes do not expose).
        input_size: ``(height, width)`` of the preprocessed images.
        method: One of :data:`METHODS`.
        layer: Grad-CAM target layer, a dotted module name of the backbone; None picks one
            (see :mod:`vitkit.explain.targets`).
        head_fusion: How rollout and attn-last combine attention heads.
        discard_ratio: Share of the lowest attention weights rollout drops per layer.
    """

    def __init__(self, model: ImageClassifier, input_size: tuple[int, int], method: str = "auto",
                 layer: str | None = None, head_fusion: HeadFusion = DEFAULT_HEAD_FUSION,
                 discard_ratio: float = 0.9) -> None:
        if head_fusion not in HEAD_FUSIONS:
            raise ConfigError(f"unknown head fusion {head_fusion!r}; use one of "
                              f"{', '.join(HEAD_FUSIONS)}.")
        if not 0.0 <= discard_ratio < 1.0:
            raise ConfigError(f"the discard ratio must be in [0, 1), got {discard_ratio}.")
        self.model = model
        self.input_size = input_size
        self.method = choose_method(model, method)
        self.head_fusion: HeadFusion = head_fusion
        self.discard_ratio = discard_ratio
        self.layer: str | None = None
        if self.method in GRADIENT_METHODS:
            self.layer = layer or default_target_layer(model, input_size)
            self._module = resolve_layer(model, self.layer, input_size)
        elif layer is not None:
            raise ConfigError(f"--layer applies to gradcam and gradcam++ only; {self.method} "
                              "uses the attention of every layer.")

    @property
    def class_specific(self) -> bool:
        """Whether the map depends on the explained class (Grad-CAM does, rollout does not)."""
        return self.method in GRADIENT_METHODS

    def __call__(self, images: torch.Tensor,
                 targets: torch.Tensor | None = None) -> BatchExplanation:
        """Maps for ``images`` ``(B, 3, H, W)``; ``targets`` ``(B,)`` are the classes to
        explain (None: the predicted ones)."""
        device = next(self.model.parameters()).device
        images = images.to(device)
        was_training = self.model.training
        self.model.eval()
        try:
            if self.method in GRADIENT_METHODS:
                maps, logits, chosen = self._gradient_maps(images, targets)
            else:
                maps, logits, chosen = self._attention_maps(images, targets)
        finally:
            self.model.train(was_training)
        return BatchExplanation(normalize_maps(maps.float()).cpu(), logits.float().cpu(),
                                chosen.cpu())

    def _gradient_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []

        def keep_output(_module: Any, _inputs: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        handle = self._module.register_forward_hook(keep_output)
        try:
            with torch.enable_grad():
                # An input that needs grad keeps the graph even when every weight is frozen.
                logits = self.model(images.detach().requires_grad_(True))
                chosen = _targets(logits, targets)
                score = logits.gather(1, chosen[:, None]).sum()  # samples are independent in eval
                if not captured:
                    raise VitkitError(f"layer '{self.layer}' did not run in the forward pass; "
                                      "pick another --layer.")
                activations = captured[-1]
                (gradients,) = torch.autograd.grad(score, activations, allow_unused=True)
        finally:
            handle.remove()
        if gradients is None:
            gradients = torch.zeros_like(activations)
        activations = activations.detach()
        if activations.ndim == 3:  # transformer tokens (B, N, C)
            prefix, grid = token_layout(self.model, self.input_size, activations.shape[1])
            activations = tokens_to_grid(activations, grid, prefix)
            gradients = tokens_to_grid(gradients, grid, prefix)
        elif activations.ndim != 4:
            raise VitkitError(f"layer '{self.layer}' gives a {activations.ndim}-D output; "
                              "Grad-CAM needs a feature map (B, C, H, W) or tokens (B, N, C).")
        cam = gradcam if self.method == "gradcam" else gradcam_plus_plus
        return cam(activations.float(), gradients.float()), logits.detach(), chosen

    def _attention_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad(), capture_attention(self.model) as recorder:
            logits = self.model(images)
        attentions = [a.float() for a in recorder.maps]
        if not attentions:
            raise VitkitError("no attention weights were recorded; this transformer's attention "
                              "is not supported by rollout. Use --method gradcam.")
        prefix, grid = token_layout(self.model, self.input_size, attentions[-1].shape[-1])
        if self.method == "rollout":
            relevance = rollout_relevance(attentions, prefix, self.head_fusion,
                                          self.discard_ratio)
        else:
            relevance = last_layer_relevance(attentions, prefix, self.head_fusion)
        return relevance_to_grid(relevance, grid), logits, _targets(logits, targets)


def _targets(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    if targets is None:
        return logits.argmax(dim=1)
    return targets.to(logits.device, torch.long)
