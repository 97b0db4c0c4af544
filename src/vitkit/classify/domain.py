"""Domain-adversarial training (DANN, Ganin & Lempitsky 2015; Ganin et al., JMLR 2016).

A domain classifier learns to tell the backbone's pooled features of labelled source images
from those of unlabelled target images; between the two sits a gradient-reversal layer, so
the backbone is pushed the other way: towards features the classifier cannot tell apart, on
which the class head (trained on the source labels) also works for the target.

* :class:`GradientReversal`: identity forward, ``-strength * grad`` backward.
* :class:`DomainHead`: Linear(D, 256) - ReLU - Dropout(0.5) - Linear(256, 2).
* :func:`dann_lambda`: the paper's schedule ``2 / (1 + exp(-10 p)) - 1`` of training
  progress ``p`` in [0, 1]: 0 at the start, when the features are still arbitrary and the
  domain signal mostly noise, rising to 1.
* :class:`DannLoss`: the training engine's loss hook. Loss = the engine's own classification
  loss on the source batch + ``weight`` x the domain cross-entropy over the source batch and
  one equally large target batch. ``p`` counts the training batches of the image stages
  (``top``, ``full``); the ``head`` stage trains a head on cached features of the frozen
  backbone, where there is nothing to adapt: its loss is the plain classification loss.
* :func:`domain_accuracy`, :func:`probe_domain_accuracy`: how well features still tell the
  domains apart (0.5: not at all).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vitkit.backbones import ImageClassifier
from vitkit.classify.engine import TrainBatch
from vitkit.console import stderr_console
from vitkit.data import make_loader

SOURCE, TARGET = 0, 1
HIDDEN = 256


class GradientReversal(torch.autograd.Function):
    """Identity on the way forward; the gradient times ``-strength`` on the way back."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.neg() * ctx.strength, None


def reverse_gradient(x: torch.Tensor, strength: float) -> torch.Tensor:
    """``x`` unchanged, whose gradient flows back multiplied by ``-strength``."""
    out: torch.Tensor = GradientReversal.apply(x, strength)  # type: ignore[no-untyped-call]
    return out


class DomainHead(nn.Sequential):
    """Source or target? Linear(D, 256) - ReLU - Dropout(0.5) - Linear(256, 2) on (B, D)."""

    def __init__(self, in_features: int) -> None:
        super().__init__(nn.Linear(in_features, HIDDEN), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(HIDDEN, 2))


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """``2 / (1 + exp(-gamma p)) - 1`` for ``p`` clipped to [0, 1]: 0, 0.987 at p = 0.5 …
    (gamma 10, the paper's), 0.99991 at p = 1."""
    p = min(1.0, max(0.0, progress))
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


def domain_loss(head: nn.Module, source: torch.Tensor, target: torch.Tensor,
                strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``head`` telling source (B, D) from target (B', D) features, through a
    gradient reversal of ``strength``; returns (the loss, (B + B',) correct predictions)."""
    features = torch.cat([source, target]).float()  # (B + B', D)
    labels = torch.cat([
        torch.full((len(source),), SOURCE, dtype=torch.long, device=features.device),
        torch.full((len(target),), TARGET, dtype=torch.long, device=features.device)])
    logits = head(reverse_gradient(features, strength))  # (B + B', 2)
    return F.cross_entropy(logits, labels), logits.detach().argmax(1) == labels


@torch.no_grad()
def domain_accuracy(head: nn.Module, source: torch.Tensor, target: torch.Tensor) -> float:
    """Balanced accuracy (mean of the two domains' accuracies) of ``head`` in eval mode."""
    was_training = head.training
    head.eval()
    try:
        device = next(head.parameters()).device
        hits = [
            float((head(x.float().to(device)).argmax(1) == label).float().mean())
            for x, label in ((source, SOURCE), (target, TARGET))
        ]
    finally:
        head.train(was_training)
    return sum(hits) / 2


def probe_domain_accuracy(source: torch.Tensor, target: torch.Tensor, folds: int = 5,
                          seed: int = 0) -> float | None:
    """Balanced accuracy of a fresh logistic regression telling source from target features,
    cross-validated (stratified ``folds``); None with fewer than 2 rows on a side.

    Unlike :func:`domain_accuracy` it needs no domain head, so it measures a source-only
    model's features too (a "proxy A-distance": 0.5 = indistinguishable, 1 = separable).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = min(folds, len(source), len(target))
    if k < 2:
        return None
    x = torch.cat([source, target]).double().numpy()
    y = np.r_[np.zeros(len(source)), np.ones(len(target))]
    probe = make_pipeline(StandardScaler(),
                          LogisticRegression(max_iter=2000, class_weight="balanced"))
    splits = StratifiedKFold(k, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, x, y, cv=splits, scoring="balanced_accuracy").mean())


class DomainAdversary(nn.Module):
    """What the engine trains and checkpoints for DANN: the domain head, and the count of
    image-stage training batches seen (``p``'s numerator), so a resumed run goes on with the
    same strength and the same target batches."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.classifier = DomainHead(in_features)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @property
    def step(self) -> int:
        return int(self.get_buffer("steps"))

    def advance(self) -> None:
        self.get_buffer("steps").add_(1)


class TargetBatches:
    """Batches of unlabelled target images, one per source batch, cycling the target set.

    The order is fixed by (seed, image-stage epoch, pass over the target set), computed from
    the step number: a resumed run (checkpoints fall on epoch ends) draws the same batches.
    """

    def __init__(self, dataset: Dataset, batch_size: int, steps_per_epoch: int, seed: int,
                 num_workers: int = 0) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.steps_per_epoch, self.seed, self.num_workers = steps_per_epoch, seed, num_workers
        self._iterator: Any = None
        self._epoch, self._pass = -1, 0

    def batch(self, step: int) -> torch.Tensor:
        """The (b, 3, H, W) target images for image-stage step ``step`` (0-based)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        if self._iterator is None or epoch != self._epoch or within == 0:
            self._epoch, self._pass = epoch, 0
            self._iterator = self._start()
        try:
            images = next(self._iterator)[0]
        except StopIteration:
            self._pass += 1
            self._iterator = self._start()
            images = next(self._iterator)[0]
        return images

    def _start(self) -> Any:
        seed = int(np.random.SeedSequence([self.seed, self._epoch, self._pass])
                   .generate_state(1)[0])
        return iter(make_loader(self.dataset, self.batch_size, shuffle=True, seed=seed,
                                num_workers=self.num_workers))


@dataclass
class _DomainTally:
    loss: float = 0.0  # summed over batches
    batches: int = 0
    correct: int = 0
    seen: int = 0
    strength: float = 0.0  # the last step's

    def add(self, loss: float, correct: torch.Tensor, strength: float) -> None:
        self.strength = strength
        self.loss += loss
        self.batches += 1
        self.correct += int(correct.sum())
        self.seen += len(correct)


class DannLoss:
    """The engine's loss hook for domain-adversarial training.

    Args:
        model: The classifier being trained; a forward pre-hook on its head reads the pooled
            (CNN) or class-token (ViT) features the head receives.
        supervised_loss: The engine's own loss (:meth:`Trainer.supervised_loss`).
        targets: The unlabelled target images.
        total_steps: Training batches of the image stages together (``p = step / total``).
        weight: Weight of the domain loss.
        lambda_max: The reversal strength the schedule reaches (``lambda_max * dann_lambda``).
        lr_scale: The domain head's learning rate as a multiple of the stage's.
        device: Where the domain head lives (the model's device).
        autocast: The engine's mixed-precision context, for the target forward pass.
    """

    def __init__(self, model: ImageClassifier,
                 supervised_loss: Callable[[torch.Tensor, TrainBatch], torch.Tensor],
                 targets: TargetBatches, total_steps: int, weight: float = 1.0,
                 lambda_max: float = 1.0, lr_scale: float = 1.0,
                 device: torch.device | str = "cpu",
                 autocast: Callable[[], AbstractContextManager[Any]] = nullcontext) -> None:
        if isinstance(model.head, nn.ModuleList):
            raise ValueError("domain adaptation needs a model with one head")
        self.model = model
        self.supervised_loss = supervised_loss
        self.targets = targets
        self.total_steps = max(1, total_steps)
        self.weight, self.lambda_max = weight, lambda_max
        self.trainable_lr_scale = lr_scale
        self.autocast = autocast
        self.trainable = DomainAdversary(model.num_features).to(device)
        self._features: torch.Tensor | None = None
        self._capture = model.head.register_forward_pre_hook(self._read_features)
        self._epoch = _DomainTally()

    def _read_features(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self._features = args[0].flatten(1)  # (B, D)

    def _take_features(self) -> torch.Tensor:
        features, self._features = self._features, None
        if features is None:
            raise RuntimeError("the model's head did not run: no features to adapt")
        return features

    @property
    def strength(self) -> float:
        """The reversal strength of the next step."""
        return self.lambda_max * dann_lambda(self.trainable.step / self.total_steps)

    def __call__(self, outputs: Any, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        loss = self.supervised_loss(outputs, batch)
        if batch.stage == "head":  # cached features of a frozen backbone: nothing to adapt
            return loss, outputs
        source = self._take_features()
        step, strength = self.trainable.step, self.strength
        images = self.targets.batch(step)[: len(source)].to(source.device)
        size = tuple(batch.inputs.shape[-2:])
        if tuple(images.shape[-2:]) != size:  # progressive resizing shrank the source batch
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                                   antialias=True)
        with self.autocast():
            self.model(images)
        target = self._take_features()
        adversarial, correct = domain_loss(self.trainable.classifier, source, target, strength)
        self.trainable.advance()
        self._epoch.add(float(adversarial.detach()), correct, strength)
        if (step + 1) % self.targets.steps_per_epoch == 0:
            self.log()
        return loss + self.weight * adversarial, outputs

    def log(self) -> None:
        """Says on stderr how the domain head did since the last line (each epoch's end)."""
        tally = self._epoch
        if tally.batches:
            stderr_console.print(
                f"  domain: loss {tally.loss / tally.batches:.3f}, head accuracy "
                f"{tally.correct / tally.seen:.3f} (0.5: features alike), reversal strength "
                f"{tally.strength:.3f}")
        self._epoch = _DomainTally()

    def close(self) -> None:
        """Stops reading the model's features (training is over)."""
        self._capture.remove()
        self._features = None
