"""Continual learning pieces for the classifier's engine: a head that grows with new classes,
a training set that rehearses the exemplar memory at a fixed share, and Learning without
Forgetting (Li & Hoiem, 2016) as a :class:`~vitkit.classify.engine.LossHook`.

Rehearsal follows the transfer-learning guide vitkit grew from (a memory of 1,000 images,
replay ratio 0.3). LwF keeps the new model's old-class logits close to the old model's on the
same images: ``CE(s, y) + weight * T^2 * KL(softmax(o/T) || softmax(s_old/T))`` with the old
model's logits ``o`` and the new model's logits of the old classes ``s_old``, ``T = 2``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vitkit.backbones.model import ImageClassifier
from vitkit.classify.distill import label_loss, soft_kl
from vitkit.errors import ConfigError

LWF_TEMPERATURE = 2.0


def grow_head(model: ImageClassifier, old_classes: int) -> None:
    """Keeps the first ``old_classes`` rows of the (already larger) head as they were trained
    and starts the new rows at zero, so the new classes begin undecided rather than random.

    ``model`` carries the old weights for every layer but the head's new rows; see
    :func:`load_with_grown_head`."""
    head = _linear_head(model)
    with torch.no_grad():
        head.weight[old_classes:].zero_()
        if head.bias is not None:
            head.bias[old_classes:].zero_()


def load_with_grown_head(model: ImageClassifier, old_state: Mapping[str, torch.Tensor]) -> int:
    """Loads a bundle's weights (``model.safetensors``, for ``model.model``) into ``model``
    whose head has more outputs; returns the number of old classes."""
    head = _linear_head(model)
    names = {id(p): n for n, p in model.model.named_parameters()}
    weight_name, bias_name = names[id(head.weight)], (
        names[id(head.bias)] if head.bias is not None else None)
    old_weight = old_state[weight_name]
    old_classes = int(old_weight.shape[0])
    if old_classes > head.weight.shape[0] or old_weight.shape[1:] != head.weight.shape[1:]:
        raise ConfigError(f"the old head has shape {tuple(old_weight.shape)}, which does not "
                          f"fit into {tuple(head.weight.shape)}")
    body = {k: v for k, v in old_state.items() if k not in (weight_name, bias_name)}
    missing, unexpected = model.model.load_state_dict(body, strict=False)
    left_out = [k for k in missing if k not in (weight_name, bias_name)]
    if left_out or unexpected:
        raise ConfigError("the bundle's weights do not match its architecture "
                          f"(missing {left_out[:3]}, unexpected {list(unexpected)[:3]}).")
    with torch.no_grad():
        head.weight[:old_classes].copy_(old_weight)
        if head.bias is not None and bias_name is not None:
            head.bias[:old_classes].copy_(old_state[bias_name])
    grow_head(model, old_classes)
    return old_classes


def _linear_head(model: ImageClassifier) -> nn.Linear:
    head = model.head
    if not isinstance(head, nn.Linear):
        raise ConfigError("continual learning extends a single linear head; this model's head "
                          f"is {type(head).__name__} (a distilled DeiT has two). Continue from "
                          "a bundle trained with another model.")
    return head


class ReplayDataset(Dataset[tuple[torch.Tensor, int]]):
    """The new training images plus draws from the exemplar memory, so that ``ratio`` of what
    an epoch sees is rehearsal: ``n_new * ratio / (1 - ratio)`` memory items per epoch.

    Which exemplar a memory item is, is drawn anew each time it is read, from torch's global
    generator: the engine seeds it per epoch (and each loader worker from the epoch's seed),
    so an epoch sees a fresh sample of the memory and a resumed run replays the same one.
    """

    def __init__(self, new: Dataset, memory: Dataset, ratio: float) -> None:
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"--replay-ratio must be in [0, 1), got {ratio}")
        self.new, self.memory = new, memory
        self.n_new = len(new)  # type: ignore[arg-type]
        self.n_memory = len(memory)  # type: ignore[arg-type]
        # rounded up, but not for float noise (70 * 0.3 / 0.7 is 30.000000000000004)
        wanted = math.ceil(self.n_new * ratio / (1.0 - ratio) - 1e-9) if ratio > 0 else 0
        self.n_replay = wanted if self.n_memory else 0
        self.class_to_idx: dict[str, int] = dict(getattr(new, "class_to_idx", {}))
        # What one epoch sees, for what counts it (the engine's balanced class weights): the
        # new images once and the memory's images as often as the replay draws them on
        # average; counting each exemplar once would weigh a small memory's classes up twice
        # over (once by the draws, once by the weights).
        remembered = list(getattr(memory, "samples", []))
        self.samples = list(getattr(new, "samples", [])) + [
            remembered[i % len(remembered)] for i in range(self.n_replay if remembered else 0)]

    def __len__(self) -> int:
        return self.n_new + self.n_replay

    def __getitem__(self, i: int) -> Any:
        if i < self.n_new:
            return self.new[i]
        pick = int(torch.randint(self.n_memory, (1,)).item())
        return self.memory[pick]


class LwFHook:
    """Learning without Forgetting as the engine's loss: the labels' cross-entropy plus
    ``weight`` times the distillation of the old model's logits into the new model's logits
    of the old classes (module docstring).

    In the head stage the engine passes the frozen backbone's features; they are the old
    model's features too (the continued model starts from its weights), so the old head alone
    gives the old logits there.
    """

    def __init__(self, old_model: ImageClassifier, old_classes: int, weight: float = 1.0,
                 temperature: float = LWF_TEMPERATURE, label_smoothing: float = 0.0) -> None:
        self.old = copy.deepcopy(old_model).eval()
        for param in self.old.parameters():
            param.requires_grad_(False)
        self.old_classes = old_classes
        self.weight, self.temperature = weight, temperature
        self.label_smoothing = label_smoothing
        self.trainable = None

    def __call__(self, outputs: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        logits = outputs
        targets = batch.soft_targets if batch.soft_targets is not None else batch.targets
        loss = label_loss(logits, targets, self.label_smoothing)
        inputs = batch.inputs
        self.old.to(inputs.device)
        with torch.no_grad():
            old_logits = self.old.head(inputs) if batch.stage == "head" else self.old(inputs)
        distill = soft_kl(logits[:, :self.old_classes], old_logits.float(), self.temperature)
        return loss + self.weight * distill, logits
