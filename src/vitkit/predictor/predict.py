"""The Predictor: a bundle's model, on any runtime, with its labels and preprocessing."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from PIL import Image

from vitkit.backbones import BackboneSpec, ImageClassifier, rebuild
from vitkit.bundle import META_FILE, Bundle, BundleMeta, BundleSource, load_weights
from vitkit.console import make_progress
from vitkit.data import ImageProblem, eval_transform
from vitkit.data.files import find_images, why_unmatched
from vitkit.data.intensity import (
    IntensitySpec,
    bundle_intensity,
    load_image,
    rendered_for,
    require_medical,
)
from vitkit.data.transforms import bundle_preprocessing
from vitkit.errors import BundleError, ImageFailure, VitkitError, first_line
from vitkit.predictor.runtimes import (
    RUNTIME_MODULES,
    Runtime,
    TorchRuntime,
    available,
    open_runtime,
)
from vitkit.predictor.tta import TtaTiming, check_tta, views
from vitkit.predictor.variants import REFERENCE_VARIANT, Variant, find_variant

if TYPE_CHECKING:
    from vitkit.ood import OodDetector

Item = TypeVar("Item")

UNKNOWN = "unknown"
"""The label of an image the bundle's OOD detector flags as unlike the training data."""


@dataclass
class Prediction:
    path: str
    label: str
    score: float
    topk: list[dict[str, Any]] = field(default_factory=list)
    ood_score: float | None = None  # set when the bundle has an OOD fit; higher = less familiar
    ood: bool | None = None  # True: out of distribution, and ``label`` is "unknown"
    # The pooled embedding, with ``predict_batch(keep_features=True)`` when the OOD score
    # computed it anyway (the service's drift monitor reuses it); never in to_dict.
    features: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "label": self.label, "score": self.score, "topk": self.topk}
        if self.ood_score is not None:
            out.update(ood=self.ood, ood_score=self.ood_score)
        return out


# The name this module gave the per-image failure before there was one type for it.
PredictionError = ImageFailure


class Predictor:
    """``predictor(batch) -> logits`` plus everything needed to feed it real images.

    The same interface whatever runs the model (see :mod:`vitkit.predictor.runtimes`);
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
            # Two calls: torch's stubs have no overload for a device with a memory format.
            self.model = model.eval().to(device).to(memory_format=torch.channels_last)
        if runtime is None:
            if self.model is None:
                raise ValueError("a Predictor needs a model or a runtime")
            runtime = TorchRuntime(self.model, "fp32", device)
        self.runtime = runtime
        self.variant = variant or find_variant(meta, REFERENCE_VARIANT)
        self.labels: list[str] = list(meta.labels)
        self.preprocessing = bundle_preprocessing(meta.preprocessing, source or "")
        self.transform = eval_transform(self.preprocessing)
        # How images are read (windows, CLAHE; DICOM): None reads plain RGB. Every path that
        # opens an image for this model passes it on (see vitkit.data.intensity).
        self.intensity: IntensitySpec | None = bundle_intensity(meta, source or "")
        # Temperature scaling fitted into the bundle (`vitkit calibrate`); 1.0 when none.
        self.temperature = _temperature(meta, source)
        self.tta = "none"  # test-time augmentation of predict_proba: none, flip, flip-scale
        # The bundle's OOD detector, read on first use (`load(..., ood=True)`): consumers
        # that never ask (eval, bench, robustness, explain) never read ood.safetensors.
        self._ood: OodDetector | None = None
        self._ood_bundle: Bundle | None = None

    @property
    def ood(self) -> OodDetector | None:
        """The OOD detector that turns unfamiliar images into "unknown"; None: always a class."""
        if self._ood_bundle is not None:
            from vitkit.ood import load_ood_detector  # ood sits beside classify: loaded on demand

            self._ood, self._ood_bundle = load_ood_detector(self._ood_bundle), None
        return self._ood

    @ood.setter
    def ood(self, detector: OodDetector | None) -> None:
        self._ood, self._ood_bundle = detector, None

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

    def load_image(self, path: Path) -> Image.Image:
        """An image file as this model reads it (through its intensity spec, if any).

        Raises:
            ImageProblem: The file cannot be read (see :func:`vitkit.data.load_image`).
        """
        return load_image(path, intensity=self.intensity)[0]

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """A decoded image (an upload) as the model's input tensor (3, H, W): rendered by the
        intensity spec when there is one (:func:`vitkit.data.intensity.rendered_for`), then
        the evaluation transform."""
        if self.intensity is not None:
            image = rendered_for(image, self.intensity)
        return self.transform(image)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes), float32 on the CPU, for a preprocessed batch (B, 3, H, W)."""
        return self.runtime(batch)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities from raw logits: ``softmax(logits / temperature)``."""
        return (logits.float() / self.temperature).softmax(dim=1)

    def predict_proba(self, batch: torch.Tensor, timing: TtaTiming | None = None
                      ) -> torch.Tensor:
        """Calibrated probabilities (B, num_classes) of a preprocessed batch, averaged over the
        test-time augmentation views of ``self.tta``; ``timing`` collects what they cost."""
        if timing is not None and not timing.warmed_up:
            self(batch)  # first calls pay for lazy setup; keep that out of the comparison
            timing.warmed_up = True
        started = time.perf_counter()
        remaining = views(batch, self.tta)
        total = self.probabilities(self(next(remaining)))
        if timing is not None:
            timing.plain_seconds += time.perf_counter() - started
        n_views = 1
        for view in remaining:
            total = total + self.probabilities(self(view))
            n_views += 1
        if timing is not None:
            timing.total_seconds += time.perf_counter() - started
            timing.images += len(batch)
        return total / n_views

    def predict_paths(
        self, paths: Sequence[Path], top_k: int = 5, batch_size: int = 32,
        timing: TtaTiming | None = None,
    ) -> Iterator[Prediction | ImageFailure]:
        """Predicts images in batches; an unreadable file yields an error, not an exception.
        Scores are calibrated probabilities, averaged over the views of ``self.tta``."""
        k = max(1, min(top_k, len(self.labels)))
        pending: list[tuple[Path, torch.Tensor]] = []
        for path in paths:
            try:
                image = self.load_image(path)
            except ImageProblem as problem:
                yield ImageFailure(str(path), problem.reason)
                continue
            pending.append((path, self.transform(image)))
            if len(pending) == batch_size:
                yield from self._predict_batch(pending, k, timing)
                pending = []
        if pending:
            yield from self._predict_batch(pending, k, timing)

    def _predict_batch(
        self, items: list[tuple[Path, torch.Tensor]], k: int, timing: TtaTiming | None = None
    ) -> Iterator[Prediction]:
        yield from self.predict_batch(torch.stack([t for _, t in items]),
                                      [str(path) for path, _ in items], k, timing)

    def predict_batch(self, batch: torch.Tensor, names: Sequence[str], top_k: int = 5,
                      timing: TtaTiming | None = None, keep_features: bool = False
                      ) -> list[Prediction]:
        """Predictions for a preprocessed batch (B, 3, H, W), one per name (the ``path``
        field), with the OOD verdict when the bundle has a detector: what a server calls on
        the images it has already decoded."""
        k = max(1, min(top_k, len(self.labels)))
        ood_scores, unknown, features = None, None, None
        detector = self.ood
        if detector is None:
            probs = self.predict_proba(batch, timing)
        else:
            probs, ood_scores, features = self._proba_and_ood_scores(batch, detector, timing)
            unknown = detector.is_unknown(ood_scores)
        scores, indices = probs.topk(k, dim=1)
        predictions = []
        for row, (name, row_scores, row_idx) in enumerate(
                zip(names, scores, indices, strict=True)):
            topk: list[dict[str, Any]] = [
                {"label": self.labels[int(i)], "score": float(s)}
                for s, i in zip(row_scores, row_idx, strict=True)]
            prediction = Prediction(str(name), topk[0]["label"], topk[0]["score"], topk)
            if ood_scores is not None and unknown is not None:
                prediction.ood_score = float(ood_scores[row])
                prediction.ood = bool(unknown[row])
                if keep_features and features is not None:
                    prediction.features = features[row]
                if prediction.ood:
                    prediction.label = UNKNOWN
            predictions.append(prediction)
        return predictions

    def _proba_and_ood_scores(self, batch: torch.Tensor, detector: OodDetector,
                              timing: TtaTiming | None
                              ) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Probabilities and OOD scores of a batch. One forward pass gives both features and
        logits when this predictor runs the fp32 torch model without test-time augmentation;
        otherwise the runtime gives the probabilities and the fp32 model the features."""
        if (timing is None and self.tta == "none" and self.model is not None
                and self.variant.name == "torch-fp32"):
            features, logits = embed_batch(self.model, batch)
            probs = self.probabilities(logits)
        else:
            probs = self.predict_proba(batch, timing)
            features, logits = embed_batch(self.torch_model(), batch)
        return probs, detector.score(features, logits), features


@torch.no_grad()
def embed_batch(model: ImageClassifier, images: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (B, D), logits (B, C)) of a preprocessed batch, float32 on the CPU, from one
    backbone pass."""
    device = next(model.parameters()).device
    features, logits = model.features_and_logits(images.to(device))
    return features.float().cpu(), logits.float().cpu()


def load(path: BundleSource, device: str = "cpu", variant: str | None = None,
         threads: int | None = None, tta: str = "none", ood: bool = True) -> Predictor:
    """Loads a bundle as a :class:`Predictor` on the runtime of ``variant`` (default: the
    bundle's default variant, chosen by ``vitkit optimize``, else ``torch-fp32``; when that
    variant's runtime is not installed here, ``torch-fp32`` with a warning; see
    ``vitkit bench BUNDLE`` for the list). Weights come from safetensors;
    nothing is unpickled. A TorchScript variant runs the graph stored in the bundle: load
    those only from bundles you trust, as with any program. ``tta`` sets the test-time
    augmentation of :meth:`Predictor.predict_proba` (none, flip or flip-scale). With ``ood``
    (default) and an OOD fit in the bundle, :meth:`Predictor.predict_paths` labels images
    unlike the training data "unknown" (see :mod:`vitkit.ood`). ``path`` is a bundle folder
    or an opened :class:`~vitkit.bundle.Bundle` (its ``vitkit.json`` is not read again)."""
    bundle = Bundle.open(path)
    predictor = _load(bundle, device, variant, threads)
    predictor.tta = check_tta(tta)
    if ood:
        predictor._ood_bundle = bundle
    return predictor


def _load(bundle: Bundle, device: str, variant: str | None, threads: int | None
          ) -> Predictor:
    meta, path = bundle.meta, bundle.path
    if meta.task != "classify":
        raise VitkitError(f"{path} is a '{meta.task}' bundle, not a classifier.")
    # vitkit.json's records first: an edited one fails here, naming the key, before any
    # model is built or file opened.
    bundle_preprocessing(meta.preprocessing, path)
    if bundle_intensity(meta, path) is not None:
        require_medical()
    _temperature(meta, path)
    if not meta.labels:
        raise BundleError(f"{path}/{META_FILE} lists no labels; a classifier needs its class "
                          "names. Restore vitkit.json from a copy of the bundle, or train again.")
    chosen = find_variant(meta, variant, path)
    if variant is None and chosen.runtime in RUNTIME_MODULES \
            and not available(RUNTIME_MODULES[chosen.runtime]):
        # The bundle's measured default needs a runtime this installation lacks: run the
        # reference instead of failing, and say so (a named --variant still fails loudly).
        warnings.warn(f"{path}: the default variant {chosen.name} needs {chosen.runtime}, "
                      f"which is not installed here; running {REFERENCE_VARIANT} instead "
                      f"(pip install 'vitkit[{chosen.runtime.replace('onnxruntime', 'onnx')}]')",
                      RuntimeWarning, stacklevel=3)
        chosen = find_variant(meta, REFERENCE_VARIANT, path)
    model = None
    if chosen.runtime == "torch":
        model = _rebuild(meta, path)
        load_weights(path, model.model)
        if chosen.name == "torch-fp32":
            return Predictor(model, meta, device=device, variant=chosen, source=path)
        model = model.eval()
    runtime = open_runtime(path, chosen, model, device=device, threads=threads)
    return Predictor(model if chosen.precision != "int8" else None, meta, device=device,
                     runtime=runtime, variant=chosen, source=path)


def _rebuild(meta: BundleMeta, path: Path) -> ImageClassifier:
    """The bundle's architecture from ``backbone`` and ``labels`` in ``vitkit.json``."""
    try:
        return rebuild(BackboneSpec.from_dict(meta.backbone), num_classes=len(meta.labels))
    except VitkitError:
        raise  # e.g. weights that need a download while offline: already says what to do
    except Exception as exc:  # noqa: BLE001 - KeyError, timm's "Unknown model", bad kwargs …
        first = first_line(exc)
        raise BundleError(
            f"{path}/{META_FILE}: the backbone {meta.backbone!r} cannot be built "
            f"({type(exc).__name__}: {first}). Restore vitkit.json from a copy of the bundle, "
            "or train again."
        ) from exc


def _temperature(meta: BundleMeta, path: Path | None) -> float:
    """The temperature `vitkit calibrate` fitted (1.0 when none); a positive finite number."""
    record = (meta.model_extra or {}).get("calibration") or {}
    value = record.get("temperature", 1.0) if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise BundleError(f"{path or 'the bundle'}/{META_FILE}: calibration.temperature must "
                          f"be a positive number, got {value!r}. Calibrate again with "
                          "`vitkit calibrate BUNDLE DATA`.")
    return float(value)


def expand_paths(inputs: Sequence[str], dicom: bool = False
                 ) -> tuple[list[Path], list[ImageFailure]]:
    """Files as given, folders searched recursively for images (with ``dicom``, DICOM files
    too), globs expanded.

    Returns the image paths (in a stable order, without duplicates) and an error per input that
    matched nothing.
    """
    found, unmatched = find_images(inputs, dicom)
    return found, [ImageFailure(item, why_unmatched(item)) for item in unmatched]


def readable_batches(items: Sequence[Item], path_of: Callable[[Item], Path | str],
                     transform: Callable[[Any], torch.Tensor], batch_size: int,
                     skipped: list[ImageFailure], progress: bool = False,
                     description: str = "images", intensity: IntensitySpec | None = None
                     ) -> Iterator[list[tuple[Item, torch.Tensor]]]:
    """``items`` whose image file loads (through ``intensity``, a predictor's spec),
    transformed, in batches of ``(item, tensor)``; an unreadable or odd file is appended to
    ``skipped`` and the run goes on."""
    pending: list[tuple[Item, torch.Tensor]] = []
    with make_progress(progress) as bar:
        task = bar.add_task(description, total=len(items), stats="") if bar else None
        for item in items:
            path = Path(path_of(item))
            try:
                image, _ = load_image(path, intensity=intensity)
                pending.append((item, transform(image)))
            except ImageProblem as problem:
                skipped.append(ImageFailure(str(path), problem.reason))
            if len(pending) == batch_size:
                yield pending
                pending = []
            if bar is not None and task is not None:
                bar.update(task, advance=1)
        if pending:
            yield pending
