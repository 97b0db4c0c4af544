"""Evaluating a classifier on labelled images: predictions in batches, then metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vitkit.console import make_progress
from vitkit.data import ImageDataset, Sample, make_loader
from vitkit.evaluate.metrics import ClassificationMetrics, classification_metrics
from vitkit.predictor.predict import Predictor
from vitkit.predictor.tta import TtaTiming


@dataclass
class Evaluation:
    metrics: ClassificationMetrics
    probs: np.ndarray  # (N, C)
    targets: np.ndarray  # (N,)
    samples: list[Sample]

    def sample_predictions(self, labels: list[str], limit: int = 24) -> list[dict[str, object]]:
        """Up to ``limit`` predictions for the report, mistakes first, then spread over classes."""
        preds = self.probs.argmax(1)
        wrong = [i for i in range(len(preds)) if preds[i] != self.targets[i]]
        right = [i for i in range(len(preds)) if preds[i] == self.targets[i]]
        step = max(1, len(right) // max(1, limit - min(len(wrong), limit // 2)))
        chosen = wrong[: limit // 2] + right[::step]
        return [
            {
                "path": str(self.samples[i].path),
                "true": labels[int(self.targets[i])],
                "pred": labels[int(preds[i])],
                "score": float(self.probs[i, preds[i]]),
            }
            for i in chosen[:limit]
        ]


def evaluate_samples(
    predictor: Predictor,
    samples: list[Sample],
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "evaluating",
    timing: TtaTiming | None = None,
) -> Evaluation:
    """Runs ``predictor`` over ``samples`` (already validated) and computes all metrics.

    Probabilities are the predictor's calibrated ones (its temperature), averaged over its
    test-time augmentation views; ``timing`` collects what those views cost.
    """
    class_to_idx = {label: i for i, label in enumerate(predictor.labels)}
    dataset = ImageDataset(samples, class_to_idx, predictor.transform,
                           intensity=predictor.intensity)
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, seed=0,
                         num_workers=num_workers)
    chunks, targets = [], []
    with make_progress(progress) as bar:
        task = bar.add_task(description, total=len(dataset), stats="") if bar else None
        for images, y in loader:
            chunks.append(predictor.predict_proba(images, timing))
            targets.append(y)
            if bar is not None and task is not None:
                bar.update(task, advance=len(y))
    probs = torch.cat(chunks).numpy().astype(np.float64)
    y_true = torch.cat(targets).numpy()
    metrics = classification_metrics(y_true, probs, predictor.labels)
    return Evaluation(metrics, probs, y_true, list(samples))
