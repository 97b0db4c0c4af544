"""The Predictor: a bundle's model, on any runtime, with its labels and preprocessing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitkit.backbones import BackboneSpec, ImageClassifier, rebuild
from vitkit.bundle import BundleMeta, load_weights, read_meta
from vitkit.compress.runtimes import Runtime, TorchRuntime, open_runtime
from vitkit.compress.variants import Variant, find_variant
from vitkit.data import ImageProblem, Preprocessing, eval_transform, load_rgb
from vitkit.data.files import find_images
from vitkit.errors import VitkitError


@dataclass
class Prediction:
    path: str
    label: str
    score: float
    topk: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "label": self.label, "score": self.score, "topk": self.topk}


@dataclass
class PredictionError:
    path: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.error}


class Predictor:
    """``predictor(batch) -> logits`` plus everything needed to feed it real images.

    The same interface whatever runs the model (see :mod:`vitkit.compress.runtimes`);
    ``model`` is the torch model when the bundle's weights were loaded (explanations need it),
    else None.
    """

    def __init__(self, model: ImageClassifier | None, meta: BundleMeta, device: str = "cpu",
                 runtime: Runtime | None = None, variant: Variant | None = None,
                 source: Path | None = None) -> None:
        self.meta = meta
        self.source = source  # the bundle folder, when loaded from one
        self.device = torch.device(device)
        self.model = None
        if model is not None:
            self.model = model.eval().to(device, memory_format=torch.channels_last)
        if runtime is None:
            if self.model is None:
                raise ValueError("a Predictor needs a model or a runtime")
            runtime = TorchRuntime(self.model, "fp32", device)
        self.runtime = runtime
        self.variant = variant or find_variant(meta, None)
        self.labels: list[str] = list(meta.labels)
        self.preprocessing = Preprocessing.model_validate(meta.preprocessing)
        self.transform = eval_transform(self.preprocessing)

    def torch_model(self) -> ImageClassifier:
        """The bundle's fp32 torch model (features, gradients): the one this predictor runs, or,
        for a variant on another runtime or in int8, loaded from the bundle on first use."""
        if self.model is None:
            if self.source is None:
                raise VitkitError("this predictor has no torch model and no bundle to load "
                                  "one from; load it with vitkit.load(bundle).")
            model = rebuild(BackboneSpec.from_dict(self.meta.backbone),
                            num_classes=len(self.meta.labels))
            load_weights(self.source, model.model)
            self.model = model.eval().to(self.device)
        return self.model

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes), float32 on the CPU, for a preprocessed batch (B, 3, H, W)."""
        return self.runtime(batch)

    def predict_paths(
        self, paths: Sequence[Path], top_k: int = 5, batch_size: int = 32
    ) -> Iterator[Prediction | PredictionError]:
        """Predicts images in batches; an unreadable file yields an error, not an exception."""
        k = max(1, min(top_k, len(self.labels)))
        pending: list[tuple[Path, torch.Tensor]] = []
        for path in paths:
            try:
                image, _ = load_rgb(path)
            except ImageProblem as problem:
                yield PredictionError(str(path), problem.reason)
                continue
            pending.append((path, self.transform(image)))
            if len(pending) == batch_size:
                yield from self._predict_batch(pending, k)
                pending = []
        if pending:
            yield from self._predict_batch(pending, k)

    def _predict_batch(
        self, items: list[tuple[Path, torch.Tensor]], k: int
    ) -> Iterator[Prediction]:
        probs = self(torch.stack([t for _, t in items])).softmax(dim=1)
        scores, indices = probs.topk(k, dim=1)
        for (path, _), row_scores, row_idx in zip(items, scores, indices, strict=True):
            topk = [{"label": self.labels[int(i)], "score": float(s)}
                    for s, i in zip(row_scores, row_idx, strict=True)]
            yield Prediction(str(path), topk[0]["label"], topk[0]["score"], topk)


def load(path: str | Path, device: str = "cpu", variant: str | None = None,
         threads: int | None = None) -> Predictor:
    """Loads a bundle as a :class:`Predictor` on the runtime of ``variant`` (default
    ``torch-fp32``; see ``vitkit bench BUNDLE`` for the list). Weights come from safetensors;
    nothing is unpickled. A TorchScript variant runs the graph stored in the bundle: load
    those only from bundles you trust, as with any program."""
    meta = read_meta(path)
    if meta.task != "classify":
        raise VitkitError(f"{path} is a '{meta.task}' bundle, not a classifier.")
    chosen = find_variant(meta, variant, path)
    model = None
    if chosen.runtime == "torch":
        model = rebuild(BackboneSpec.from_dict(meta.backbone), num_classes=len(meta.labels))
        load_weights(path, model.model)
        if chosen.name == "torch-fp32":
            return Predictor(model, meta, device=device, variant=chosen, source=Path(path))
        model = model.eval()
    runtime = open_runtime(path, chosen, model, device=device, threads=threads)
    return Predictor(model if chosen.precision != "int8" else None, meta, device=device,
                     runtime=runtime, variant=chosen, source=Path(path))


def expand_paths(inputs: Sequence[str]) -> tuple[list[Path], list[PredictionError]]:
    """Files as given, folders searched recursively for images, globs expanded.

    Returns the image paths (in a stable order, without duplicates) and an error per input that
    matched nothing.
    """
    found, unmatched = find_images(inputs)
    return found, [PredictionError(item, "no such file, or no images matched")
                   for item in unmatched]
