"""Structured pruning of a ViT's MLP width: fewer hidden units in every block's MLP.

The MLPs hold two thirds of a ViT's weights and most of its multiply-adds at 224 px (ViT-S:
4.7 of 6.1 GFLOP per image outside attention). Removing hidden units keeps dense matrices
(a smaller ``mlp_ratio``), so every runtime and quantizer gains without sparse kernels.

Which units go: per block, a unit's importance is the mean magnitude of its activation on
real images times the norm of its output weights (what it contributes to the residual
stream), and the least important go. Each block keeps the same number of units, so the
pruned model is the same timm architecture with a smaller ``mlp_ratio`` (recorded as a timm
keyword argument in the bundle, so ``rebuild`` makes it). Accuracy is then recovered by a
short distillation from the unpruned model (:mod:`vitkit.workflows.prune`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import nn

from vitkit.errors import VitkitError

UNIT_MULTIPLE = 32  # hidden widths stay multiples of this (SIMD- and AMX-friendly tiles)


def vit_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a timm ViT (inside an ImageClassifier or not), each with an
    ``mlp`` that has ``fc1`` and ``fc2``; a clear error otherwise."""
    inner = getattr(model, "model", model)
    blocks = list(getattr(inner, "blocks", []))
    if not blocks or not all(hasattr(getattr(b, "mlp", None), "fc1") for b in blocks):
        raise VitkitError("MLP pruning works on timm Vision Transformers (blocks with an "
                          "fc1 / fc2 MLP); this model is not one.")
    return blocks


class VitMlp(NamedTuple):
    """One block's MLP, typed: the layers pruning reads and cuts."""

    fc1: nn.Linear
    act: nn.Module
    fc2: nn.Linear


def vit_mlps(model: nn.Module) -> list[VitMlp]:
    """The MLP of every transformer block of a timm ViT (see :func:`vit_blocks`)."""
    mlps = []
    for block in vit_blocks(model):
        fc1, act, fc2 = (getattr(block.mlp, name, None) for name in ("fc1", "act", "fc2"))
        if not (isinstance(fc1, nn.Linear) and isinstance(act, nn.Module)
                and isinstance(fc2, nn.Linear)):
            raise VitkitError("MLP pruning works on timm Vision Transformers whose MLP is "
                              "fc1 (Linear) → act → fc2 (Linear); this model's is not.")
        mlps.append(VitMlp(fc1, act, fc2))
    return mlps


@torch.inference_mode()
def mlp_importance(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Per block, the importance of each hidden unit: mean |activation| over the images'
    tokens times the L2 norm of the unit's output weights."""
    mlps = vit_mlps(model)
    sums = [torch.zeros(mlp.fc1.out_features, dtype=torch.float64) for mlp in mlps]
    counts = [0] * len(mlps)
    hooks = []
    for i, mlp in enumerate(mlps):
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor, i: int = i) -> None:
            flat = output.detach().abs().reshape(-1, output.shape[-1])
            sums[i] += flat.sum(dim=0, dtype=torch.float64)
            counts[i] += flat.shape[0]
        hooks.append(mlp.act.register_forward_hook(record))
    try:
        model.eval()
        seen = 0
        for batch in batches:
            model(batch)
            seen += batch.shape[0]
    finally:
        for hook in hooks:
            hook.remove()
    if seen == 0:
        raise VitkitError("MLP importance needs at least one image")
    return [(total / max(count, 1)).float() * mlp.fc2.weight.detach().norm(dim=0)
            for total, count, mlp in zip(sums, counts, mlps, strict=True)]


def pruned_width(hidden: int, keep: float) -> int:
    """The hidden width kept: ``keep`` of ``hidden`` rounded to :data:`UNIT_MULTIPLE`, at least
    one multiple and less than ``hidden``."""
    if not 0.0 < keep < 1.0:
        raise VitkitError(f"--mlp-keep must be between 0 and 1 (the share of MLP units kept), "
                          f"not {keep}")
    width = max(UNIT_MULTIPLE, round(hidden * keep / UNIT_MULTIPLE) * UNIT_MULTIPLE)
    if width >= hidden:
        raise VitkitError(f"--mlp-keep {keep} keeps all {hidden} units once rounded to a "
                          f"multiple of {UNIT_MULTIPLE}; choose a smaller share.")
    return width


def prune_mlp_state(model: nn.Module, importance: list[torch.Tensor], width: int
                    ) -> tuple[dict[str, torch.Tensor], float]:
    """The state dict of the timm model (inside an ImageClassifier or not) with each block's MLP
    cut to its ``width`` most important units (kept in their original order), and the
    ``mlp_ratio`` that builds that shape."""
    inner = getattr(model, "model", model)
    mlps = vit_mlps(model)
    state: dict[str, torch.Tensor] = {
        k: v.detach().clone() for k, v in inner.state_dict().items()}
    for i, (mlp, scores) in enumerate(zip(mlps, importance, strict=True)):
        keep = torch.sort(torch.topk(scores, width).indices).values
        name = f"blocks.{i}.mlp"
        state[f"{name}.fc1.weight"] = state[f"{name}.fc1.weight"][keep].contiguous()
        if mlp.fc1.bias is not None:
            state[f"{name}.fc1.bias"] = state[f"{name}.fc1.bias"][keep].contiguous()
        state[f"{name}.fc2.weight"] = state[f"{name}.fc2.weight"][:, keep].contiguous()
        for key in (f"{name}.norm.weight", f"{name}.norm.bias"):  # a norm on the hidden units
            if key in state:
                state[key] = state[key][keep].contiguous()
    embed_dim = mlps[0].fc1.in_features
    ratio = width / embed_dim
    if int(embed_dim * ratio) != width:  # timm computes int(dim * mlp_ratio)
        raise VitkitError(f"an MLP width of {width} cannot be expressed as mlp_ratio for "
                          f"width {embed_dim}")
    return state, ratio
