"""Batch norms folded into the convolutions before them, for inference.

In eval mode a batch norm is a fixed per-channel scale and shift, so it can be merged into the
weights and bias of the convolution that feeds it; the network then skips one full pass over
every feature map per layer. The pairs are found by running the model once and matching each
batch norm's input to the convolution that produced it, so timm's batch-norm CNNs (ResNet,
EfficientNet, MobileNet) are handled without knowing their block names; models without batch
norms (ConvNeXt, ViTs) are left as they are.
timm's ``BatchNormAct2d`` also holds a dropout and an activation after the norm; they stay.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _after_norm(norm: nn.BatchNorm2d) -> nn.Module:
    """What a norm module does after normalising (timm's BatchNormAct2d: drop, then act)."""
    steps = [getattr(norm, name) for name in ("drop", "act") if isinstance(
        getattr(norm, name, None), nn.Module)]
    return nn.Sequential(*steps) if steps else nn.Identity()


@torch.no_grad()
def fold_batch_norms(model: nn.Module, example: torch.Tensor) -> int:
    """Folds, in place, every eval-mode ``BatchNorm2d`` whose input is exactly the output of a
    ``Conv2d`` (and nothing else reads that output). Returns how many were folded.

    ``example`` is run once through ``model`` to find the pairs; its values do not matter.

    Raises:
        ValueError: If the model is in training mode (its norms still change).
    """
    if model.training:
        raise ValueError("fold batch norms of a model in eval mode only: call model.eval() "
                         "first")
    produced_by: dict[int, str] = {}
    readers: dict[int, int] = {}
    pairs: list[tuple[str, str]] = []
    names = {module: name for name, module in model.named_modules()}
    handles = []
    kept: list[torch.Tensor] = []

    def after_conv(module: nn.Module, _inputs: tuple[torch.Tensor, ...],
                   output: torch.Tensor) -> None:
        kept.append(output)  # alive until the trace ends, so no other tensor takes its id
        produced_by[id(output)] = names[module]
        readers[id(output)] = 0

    def before_any(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        for value in inputs:
            if isinstance(value, torch.Tensor) and id(value) in readers:
                readers[id(value)] += 1
        if isinstance(module, nn.BatchNorm2d) and inputs and id(inputs[0]) in produced_by:
            pairs.append((produced_by[id(inputs[0])], names[module]))

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(after_conv))
        # Leaves are the modules that actually read tensors; timm's norms hold an activation.
        if isinstance(module, nn.BatchNorm2d) or not list(module.children()):
            handles.append(module.register_forward_pre_hook(before_any))
    try:
        expected = model(example)
    finally:
        for handle in handles:
            handle.remove()
    convs_read_once = {conv for conv, _ in pairs
                       if sum(readers[i] for i, name in produced_by.items() if name == conv) == 1}
    replaced: list[tuple[str, nn.Module]] = []
    for conv_name, norm_name in pairs:
        conv, norm = model.get_submodule(conv_name), model.get_submodule(norm_name)
        if conv_name not in convs_read_once or not isinstance(norm, nn.BatchNorm2d) or \
                norm.running_mean is None or not isinstance(conv, nn.Conv2d):
            continue
        _replace(model, conv_name, fuse_conv_bn_eval(conv, norm))
        _replace(model, norm_name, _after_norm(norm))
        replaced += [(conv_name, conv), (norm_name, norm)]
    # A convolution's output may also be read by plain code the hooks cannot see; if the
    # folded model computes anything else, put every module back.
    if replaced and not _same(expected, model(example)):
        for name, module in reversed(replaced):
            _replace(model, name, module)
        return 0
    return len(replaced) // 2


def _same(expected: object, actual: object) -> bool:
    if isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor):
        scale = float(expected.abs().max()) if expected.numel() else 0.0
        return expected.shape == actual.shape and bool(
            (expected - actual).abs().max() <= 1e-3 * max(scale, 1.0))
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        return len(expected) == len(actual) and all(
            _same(e, a) for e, a in zip(expected, actual, strict=True))
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        return expected.keys() == actual.keys() and all(
            _same(expected[k], actual[k]) for k in expected)
    return type(expected) is type(actual) and not isinstance(expected, torch.Tensor)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def inference_copy(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, bool]:
    """An eval-mode copy of ``model`` with its batch norms folded, in channels-last memory
    format (oneDNN's fast path for convolutions), and whether it is one; a model without
    batch norms (a ViT) comes back as it is, not copied. Twice as fast for
    efficientnet_lite0's anomaly features on 2 cores; each feature map within 3e-5 of the
    original's largest value, float32 rounding only (measured 2e-6 with the ImageNet weights,
    up to 1e-5 with random batch-norm statistics, where the unfolded float32 features are
    themselves 5e-6 from float64; tests/backbones/test_fold.py checks the bound)."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model, False
    fast = copy.deepcopy(model).eval()
    if not fold_batch_norms(fast, example):
        return model, False
    return fast.to(memory_format=torch.channels_last), True


__all__ = ["fold_batch_norms", "inference_copy"]
