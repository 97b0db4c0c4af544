"""Learning-curve diagnostics from a training run's epoch history (pure: rows in, numbers out).

A history is the rows of a run's ``metrics.csv`` (or the engine's epoch records as dicts):
``epoch``, ``stage``, ``train_loss``, ``val_loss``, ``val_acc`` per epoch. Values may be
strings, as a CSV reader gives them; a row whose values cannot be read is left out.

- **Convergence epoch**: the first epoch whose validation accuracy reaches
  :data:`CONVERGED_SHARE` (95 %) of the best validation accuracy of the run.
- **Overfitting onset**: the first epoch where the gap ``val_loss - train_loss`` grows by more
  than :data:`GAP_GROWTH` (10 %) over the previous epoch's gap. Only a positive previous gap
  can grow by a share of itself: after a gap of zero or below (validation loss at or under the
  training loss, common with augmentation, label smoothing or mixup on the training side)
  the epoch is not an onset, whatever follows. The two epochs must be of the same stage: the
  head stage trains on cached, unaugmented features, so its training loss is not comparable
  with an augmented stage's.
- **Best minus last**: the best validation accuracy minus the last epoch's (0 when the last
  epoch is the best): what stopping at the end instead of at the best epoch would cost.
- **Transfer gain** (:func:`transfer_gain`): the share of the from-scratch model's errors
  that pretrained weights remove, ``(pretrained - scratch) / (1 - scratch)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

CONVERGED_SHARE = 0.95
GAP_GROWTH = 0.10


@dataclass(frozen=True)
class CurveEpoch:
    """The figures of one epoch the diagnostics use."""

    epoch: int
    stage: str
    train_loss: float
    val_loss: float
    val_acc: float

    @property
    def gap(self) -> float:
        return self.val_loss - self.train_loss


@dataclass(frozen=True)
class CurveDiagnostics:
    """What a run's learning curves say; ``None`` where the history cannot tell."""

    epochs: int
    best_val_accuracy: float | None
    last_val_accuracy: float | None
    convergence_epoch: int | None
    overfitting_onset: int | None
    best_minus_last: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_history(rows: Sequence[Mapping[str, Any]]) -> list[CurveEpoch]:
    """The usable epochs of ``rows``, in epoch order."""
    epochs = []
    for row in rows:
        try:
            epoch = CurveEpoch(
                epoch=int(float(row["epoch"])), stage=str(row.get("stage") or ""),
                train_loss=float(row["train_loss"]), val_loss=float(row["val_loss"]),
                val_acc=float(row["val_acc"]),
            )
        except (KeyError, TypeError, ValueError):
            continue
        if all(math.isfinite(v) for v in (epoch.train_loss, epoch.val_loss, epoch.val_acc)):
            epochs.append(epoch)
    return sorted(epochs, key=lambda e: e.epoch)


def convergence_epoch(history: Sequence[CurveEpoch], share: float = CONVERGED_SHARE
                      ) -> int | None:
    """First epoch with ``val_acc >= share * best val_acc``; None for an empty history."""
    if not history:
        return None
    threshold = share * max(e.val_acc for e in history)
    return next(e.epoch for e in history if e.val_acc >= threshold)


def overfitting_onset(history: Sequence[CurveEpoch], growth: float = GAP_GROWTH) -> int | None:
    """First epoch whose val-train loss gap exceeds ``(1 + growth)`` times the previous epoch's
    positive gap in the same stage; None when no epoch does (see the module docstring)."""
    for previous, current in zip(history, history[1:], strict=False):
        if current.stage != previous.stage or previous.gap <= 0:
            continue
        if current.gap > (1 + growth) * previous.gap:
            return current.epoch
    return None


def diagnose(rows: Sequence[Mapping[str, Any]]) -> CurveDiagnostics:
    """All curve diagnostics of a history (rows of ``metrics.csv`` or epoch records)."""
    history = read_history(rows)
    if not history:
        return CurveDiagnostics(0, None, None, None, None, None)
    best = max(e.val_acc for e in history)
    last = history[-1].val_acc
    return CurveDiagnostics(
        epochs=len(history), best_val_accuracy=best, last_val_accuracy=last,
        convergence_epoch=convergence_epoch(history),
        overfitting_onset=overfitting_onset(history),
        best_minus_last=best - last,
    )


def transfer_gain(pretrained: float, scratch: float) -> float:
    """``(pretrained - scratch) / (1 - scratch)``: 1 when pretraining removes every error the
    scratch model makes, 0 when it removes none, negative when it adds errors.

    A perfect scratch model (``scratch == 1``) leaves no errors to remove: the gain is then
    the plain difference ``pretrained - 1`` (0 when both are perfect, negative otherwise).
    """
    if scratch >= 1.0:
        return pretrained - scratch
    return (pretrained - scratch) / (1.0 - scratch)
