"""Pre-logits features and logits of images, in one forward pass: the input of OOD scoring,
drift detection and the feature-map view.

Features come from the bundle's torch model (``ImageClassifier.forward_features``) whatever
runtime the predictor uses for its logits: an int8 OpenVINO variant has no features to offer,
so :meth:`Predictor.torch_model` loads the fp32 model beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vitkit.backbones import ImageClassifier
from vitkit.console import make_progress
from vitkit.data import ImageDataset, Sample, make_loader
from vitkit.errors import ImageFailure
from vitkit.predictor.predict import Predictor, embed_batch, readable_batches


@dataclass
class Embeddings:
    """Per image: ``features`` (N, D) and ``logits`` (N, C), float32 on the CPU, in the order of
    ``paths``; ``skipped`` lists the inputs that could not be read (never in ``paths``)."""

    features: torch.Tensor
    logits: torch.Tensor
    paths: list[str]
    targets: torch.Tensor | None = None  # (N,) class indices, when the images were labelled
    skipped: list[ImageFailure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def embed_paths(predictor: Predictor, paths: Sequence[Path | str], batch_size: int = 32,
                progress: bool = True, description: str = "features") -> Embeddings:
    """Embeds image files; an unreadable or odd file is skipped and reported, never raised."""
    model = predictor.torch_model()
    features: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    kept: list[str] = []
    skipped: list[ImageFailure] = []
    for batch in readable_batches(list(paths), lambda p: p, predictor.transform, batch_size,
                                  skipped, progress, description, predictor.intensity):
        f, z = embed_batch(model, torch.stack([t for _, t in batch]))
        features.append(f)
        logits.append(z)
        kept.extend(str(p) for p, _ in batch)
    return _stack(features, logits, kept, None, skipped, model, len(predictor.labels))


def embed_samples(predictor: Predictor, samples: Sequence[Sample], batch_size: int = 32,
                  num_workers: int = 0, progress: bool = True,
                  description: str = "features") -> Embeddings:
    """Embeds validated, labelled samples (labels must be the bundle's classes)."""
    model = predictor.torch_model()
    class_to_idx = {label: i for i, label in enumerate(predictor.labels)}
    dataset = ImageDataset(list(samples), class_to_idx, predictor.transform,
                           intensity=predictor.intensity)
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, seed=0,
                         num_workers=num_workers)
    features, logits, targets = [], [], []
    with make_progress(progress) as bar:
        task = bar.add_task(description, total=len(dataset), stats="") if bar else None
        for images, y in loader:
            f, z = embed_batch(model, images)
            features.append(f)
            logits.append(z)
            targets.append(y)
            if bar is not None and task is not None:
                bar.update(task, advance=len(y))
    return _stack(features, logits, [str(s.path) for s in samples],
                  torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long), [], model,
                  len(predictor.labels))


def _stack(features: list[torch.Tensor], logits: list[torch.Tensor], paths: list[str],
           targets: torch.Tensor | None, skipped: list[ImageFailure],
           model: ImageClassifier, classes: int) -> Embeddings:
    if not features:
        return Embeddings(torch.zeros(0, model.num_features), torch.zeros(0, classes), [],
                          targets, skipped)
    return Embeddings(torch.cat(features), torch.cat(logits), paths, targets, skipped)
