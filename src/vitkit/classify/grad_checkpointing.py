"""Gradient checkpointing: keep fewer activations in the forward pass, recompute them backward.

A model's blocks normally keep every intermediate activation until the backward pass; with
checkpointing each block keeps only its input and runs its forward again when its gradients
are needed: less peak memory for one more forward per step (``bench/train_extras.py``
measures both). The model's own mechanism is used: timm's ``set_grad_checkpointing`` (ViT,
DeiT, EVA, Swin, ConvNeXt, EfficientNet, MobileNetV3/V4, ResNet, RegNet, DenseNet, …; timm
refuses it for a few older families such as VGG, Inception, Xception-65 or CSPNet), or
Hugging Face's ``activation_checkpointing_enable`` (``gradient_checkpointing_enable`` before
transformers 5).

It matters in the ``top`` and ``full`` stages, which run the backbone on images; the ``head``
stage trains on cached features and never runs the backbone.

Two details keep training what it was without checkpointing:

- timm checkpoints without re-entrant autograd (its default): a frozen lower part gives the
  top blocks an input that needs no gradient, and the re-entrant variant would then give those
  blocks' weights no gradient at all. A user who switched it on (``TIMM_REENTRANT_CKPT``) is
  stopped with a message.
- The recomputed forward of a block would update its batch-norm running statistics a second
  time per step (measured: ``num_batches_tracked`` 2 instead of 1 on EfficientNet-Lite0). A
  hook holds the statistics during recomputation, so they are exactly those of a run without
  checkpointing; the loss and the gradients are unchanged either way.
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from vitkit.backbones import ImageClassifier
from vitkit.errors import ConfigError


class _BatchNormOncePerStep:
    """Lets each batch-norm layer update its running statistics once per forward of the model.

    The model's forward pre-hook starts a new step; a batch-norm layer that runs again within
    the same step is being recomputed by checkpointing, and runs with momentum 0 (statistics
    kept) and its batch counter set back by the one its forward adds. The momentum comes back
    after that forward, or at the next step: torch stops a recomputation as soon as it has the
    tensors it needs, which can be inside the layer's forward, before its forward hook runs.
    """

    def __init__(self, model: nn.Module) -> None:
        self.step = 0
        self.seen: dict[int, int] = {}
        self.held: dict[int, tuple[_BatchNorm, float | None]] = {}  # id -> (layer, momentum)
        model.register_forward_pre_hook(self._new_step)
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.register_forward_pre_hook(self._before)
                module.register_forward_hook(self._after)

    def _new_step(self, _module: nn.Module, _inputs: Any) -> None:
        self.step += 1
        for layer, momentum in self.held.values():
            layer.momentum = momentum
        self.held.clear()

    def _before(self, module: nn.Module, _inputs: Any) -> None:
        layer = cast(_BatchNorm, module)
        if not (layer.training and layer.track_running_stats):
            return
        key = id(layer)
        if self.seen.get(key) == self.step:  # the recomputation of this step
            self.held.setdefault(key, (layer, layer.momentum))
            layer.momentum = 0.0
            if layer.num_batches_tracked is not None:
                layer.num_batches_tracked.sub_(1)  # the forward adds it back before normalising
        self.seen[key] = self.step

    def _after(self, module: nn.Module, _inputs: Any, _output: Any) -> None:
        held = self.held.pop(id(module), None)
        if held is not None:
            held[0].momentum = held[1]


def enable_grad_checkpointing(model: ImageClassifier) -> None:
    """Switches gradient checkpointing on for ``model`` (see the module docstring).

    Raises:
        ConfigError: The model does not support it, or timm is set to re-entrant checkpoints.
    """
    inner = model.model
    name = type(inner).__name__
    if model.source == "hf":
        if not getattr(inner, "supports_gradient_checkpointing", False):
            raise ConfigError(f"--grad-checkpointing: the Hugging Face model {name} does not "
                              "support gradient checkpointing; train without it.")
        newer = getattr(inner, "activation_checkpointing_enable", None)  # transformers >= 5
        if callable(newer):
            newer(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            inner.gradient_checkpointing_enable(  # type: ignore[operator,unused-ignore]
                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        from timm.layers import use_reentrant_ckpt

        if use_reentrant_ckpt():
            raise ConfigError("--grad-checkpointing: timm is set to re-entrant checkpoints "
                              "(TIMM_REENTRANT_CKPT), which give frozen-input blocks no "
                              "gradient in the top stage; unset TIMM_REENTRANT_CKPT.")
        setter = getattr(inner, "set_grad_checkpointing", None)
        try:
            if not callable(setter):
                raise AssertionError("no set_grad_checkpointing")
            setter(True)
        except (AssertionError, NotImplementedError) as exc:
            raise ConfigError(
                f"--grad-checkpointing: timm's {name} does not support gradient checkpointing "
                f"({exc}). It works for ViT/DeiT/EVA, Swin, ConvNeXt, EfficientNet, "
                "MobileNetV3/V4, ResNet, RegNet and most other timm families; train without it "
                "or choose one of those.") from exc
    _BatchNormOncePerStep(model)
