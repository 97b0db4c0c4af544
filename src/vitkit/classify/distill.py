"""Knowledge-distillation losses and the teacher's view of a student batch (pure tensor math).

Three ways for a student to learn from a teacher's logits:

* ``soft`` (Hinton et al., 2015): ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T))
  + (1 - alpha) * CE(s, y)``. The ``T^2`` keeps the soft term's gradients the same size
  whatever the temperature, so ``alpha`` means the same at every ``T``.
* ``hard`` (DeiT): ``alpha * CE(s, argmax t) + (1 - alpha) * CE(s, y)``.
* ``token`` (DeiT's distillation token): the class token learns the labels and the
  distillation token the teacher's top class, ``(1 - alpha) * CE(cls, y) + alpha * CE(dist,
  argmax t)``; at inference timm averages the two heads.

Targets ``y`` are class indices (B,) or, under mixup/cutmix, probabilities (B, C).

And one way to learn from the teacher's features (FitNets-style hints, Romero et al., 2015):
``feature_loss`` = ``1 - cos(P s, t)`` between the student's pre-logits embedding mapped by a
trained linear map ``P`` and the teacher's. With few classes the logits say little per image
(two classes: one probability); an embedding of hundreds of dimensions says much more.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def label_loss(logits: torch.Tensor, targets: torch.Tensor,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy to class indices (B,) or to soft targets (B, C) such as mixup's."""
    logits = logits.float()
    if targets.ndim == 2:
        # Mixup's targets already carry its label smoothing.
        return torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=1)  # (B, C)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)  # (B, C)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    return kl * temperature**2


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      targets: torch.Tensor, temperature: float, alpha: float,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton's loss: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(s, y)``."""
    soft = soft_kl(student_logits, teacher_logits.detach(), temperature)
    return alpha * soft + (1 - alpha) * label_loss(student_logits, targets, label_smoothing)


def hard_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                           targets: torch.Tensor, alpha: float,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """DeiT's hard distillation: ``alpha * CE(s, argmax t) + (1 - alpha) * CE(s, y)``."""
    teacher_labels = teacher_logits.detach().argmax(dim=1)  # (B,)
    return alpha * F.cross_entropy(student_logits.float(), teacher_labels) \
        + (1 - alpha) * label_loss(student_logits, targets, label_smoothing)


def token_distillation_loss(cls_logits: torch.Tensor, dist_logits: torch.Tensor,
                            teacher_logits: torch.Tensor, targets: torch.Tensor,
                            alpha: float = 0.5, label_smoothing: float = 0.0) -> torch.Tensor:
    """DeiT's distillation token: ``(1 - alpha) * CE(cls, y) + alpha * CE(dist, argmax t)``.

    DeiT uses ``alpha = 0.5``.
    """
    teacher_labels = teacher_logits.detach().argmax(dim=1)  # (B,)
    return (1 - alpha) * label_loss(cls_logits, targets, label_smoothing) \
        + alpha * F.cross_entropy(dist_logits.float(), teacher_labels)


def renormalize(images: torch.Tensor,
                mean: Sequence[float], std: Sequence[float],
                to_mean: Sequence[float], to_std: Sequence[float],
                to_size: tuple[int, int]) -> torch.Tensor:
    """A batch normalised for one model, re-normalised and resized for another.

    The student's batch (B, 3, H, W) is un-normalised with its mean/std, resized (bilinear,
    antialiased) to the teacher's (h, w) and normalised with the teacher's mean/std: the
    teacher sees the same crop, flip and mix as the student, in the form it was trained on.
    """
    def column(values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)

    pixels = images.float() * column(std) + column(mean)  # (B, 3, H, W) in 0..1
    if tuple(pixels.shape[-2:]) != tuple(to_size):
        pixels = F.interpolate(pixels, size=to_size, mode="bilinear", align_corners=False,
                               antialias=True)  # (B, 3, h, w)
    return (pixels - column(to_mean)) / column(to_std)


def feature_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
                 projection: torch.nn.Module) -> torch.Tensor:
    """``mean(1 - cos(projection(s), t))`` over the batch: 0 when the mapped student embedding
    points where the teacher's does, 2 when opposite. The scale of either does not matter."""
    mapped = projection(student_features.float())  # (B, D_teacher)
    cosine = F.cosine_similarity(mapped, teacher_features.detach().float(), dim=1)  # (B,)
    return (1 - cosine).mean()
