"""Which parameters train in each stage, their learning rates, and the warm-up + cosine curve."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitkit.backbones import ImageClassifier


@dataclass(frozen=True)
class StagePlan:
    """The trainable groups of one stage: (parameters, learning-rate scale) pairs."""

    groups: list[tuple[list[nn.Parameter], float]]

    @property
    def parameters(self) -> list[nn.Parameter]:
        return [p for params, _ in self.groups for p in params]


def plan_stage(
    model: ImageClassifier, stage: str, top_blocks: int = 2, layer_decay: float = 1.0
) -> StagePlan:
    """Head only, the head plus the top ``top_blocks`` groups, or all with layer-wise decay.

    With layer-wise decay the head trains at the full rate and each group below it at
    ``layer_decay`` times the rate of the group above (BEiT/timm style).
    """
    head = list(model.head.parameters())
    body = model.layer_groups()
    if stage == "head":
        return StagePlan([(head, 1.0)])
    if stage == "top":
        top = body[-top_blocks:] if top_blocks > 0 else []
        return StagePlan([(head, 1.0)] + [(g, 1.0) for g in top])
    if stage == "full":
        n = len(body)
        scaled = [(g, layer_decay ** (n - i)) for i, g in enumerate(body)]
        return StagePlan([*scaled, (head, 1.0)])
    raise ValueError(f"unknown stage {stage!r}")


def apply_trainability(model: ImageClassifier, plan: StagePlan) -> None:
    """Freezes everything outside ``plan``; frozen normalisation layers keep their statistics.

    Batch-norm layers whose parameters are frozen stay in eval mode, so small fine-tuning
    batches do not overwrite the running statistics learned on the pretraining data.
    """
    trainable = {id(p) for p in plan.parameters}
    for param in model.parameters():
        param.requires_grad_(id(param) in trainable)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            own = list(module.parameters(recurse=False))
            if own and not any(p.requires_grad for p in own):
                module.eval()


def make_optimizer(
    plan: StagePlan, lr: float, weight_decay: float, extra: Sequence[nn.Parameter] = (),
    extra_scale: float = 1.0,
) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and normalisation weights (1-D tensors). ``extra``:
    parameters outside the model (a distillation projection, a domain classifier), trained at
    ``extra_scale`` times the stage's rate."""
    param_groups: list[dict[str, Any]] = []
    groups = [*plan.groups, (list(extra), extra_scale)] if extra else plan.groups
    for params, scale in groups:
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for subset, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if subset:
                param_groups.append(
                    {"params": subset, "lr": lr * scale, "weight_decay": wd, "lr_scale": scale}
                )
    return torch.optim.AdamW(param_groups, lr=lr)


def warmup_cosine(total_steps: int, warmup_share: float, min_ratio: float):  # noqa: ANN201
    """A multiplier for LambdaLR: linear warm-up, then cosine down to ``min_ratio``."""
    warmup = int(round(total_steps * warmup_share))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        progress = min(1.0, progress)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
