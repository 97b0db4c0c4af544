"""A fitted anomaly method with its threshold: scores, labels and maps for real image files.

The bundle stores the method's tensors in ``anomaly.safetensors``, the backbone's weights (cut
after the last layer used) in ``model.safetensors`` and everything else under the ``anomaly``
key of ``vitkit.json``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from vitkit.anomaly.features import rebuild_feature_backbone
from vitkit.anomaly.maps import upsample_map
from vitkit.anomaly.methods import AnomalyMethod, PatchMeanMethod, restore_deep
from vitkit.anomaly.threshold import ScoreScale, label_for
from vitkit.backbones import BackboneSpec
from vitkit.bundle import (
    Bundle,
    BundleMeta,
    BundleSource,
    load_tensors,
    load_weights,
    save_bundle,
)
from vitkit.data import ImageProblem, load_rgb
from vitkit.data.transforms import bundle_preprocessing
from vitkit.errors import BundleError, ImageFailure, VitkitError, first_line

ANOMALY_FILE = "anomaly.safetensors"
REFERENCE = "torch-fp32"  # the variant that runs the extractor in PyTorch
LABELS = ["normal", "anomaly"]


@dataclass
class AnomalyScore:
    """One image's verdict.

    Attributes:
        path: The image file.
        score: The score normalised to [0, 1]; 0.5 is the threshold.
        label: ``"anomaly"`` when the raw score passes the threshold, else ``"normal"``.
        raw_score: The method's own score (comparable only within one bundle).
        map: Normalised per-pixel map at the image's size (0.5 = threshold), when asked for.
    """

    path: str
    score: float
    label: Literal["normal", "anomaly"]
    raw_score: float
    map: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "score": self.score, "label": self.label,
                "raw_score": self.raw_score}


class AnomalyDetector:
    """A fitted method plus its threshold and score scale."""

    def __init__(self, method: AnomalyMethod, threshold: float, scale: ScoreScale,
                 record: dict[str, Any] | None = None) -> None:
        self.method = method
        self.threshold = float(threshold)
        self.scale = scale
        self.record: dict[str, Any] = dict(record or {})

    def raw_scores(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw scores (B,) and low-resolution maps (B, h, w) of RGB images of any size."""
        batch = torch.stack([self.method.prepare(image) for image in images])
        return self.method.score(batch)

    def full_maps(self, patch_maps: torch.Tensor, sizes: Sequence[tuple[int, int]],
                  normalized: bool = True) -> list[np.ndarray]:
        """Maps at each image's (width, height), smoothed: normalised to [0, 1] with 0.5 at
        the threshold (what overlays show), or in raw score units (``normalized=False``,
        not clipped, so the peak of a strong defect stays visible)."""
        input_h, input_w = self.input_size
        maps = []
        for patch_map, (width, height) in zip(patch_maps, sizes, strict=True):
            sigma = self.method.map_sigma * max(height / input_h, width / input_w)
            full = upsample_map(patch_map[None].float(), (height, width), sigma)[0].numpy()
            maps.append((self.scale.normalize(full) if normalized else full).astype(np.float32))
        return maps

    @property
    def input_size(self) -> tuple[int, int]:
        method = self.method
        if isinstance(method, PatchMeanMethod):
            if method.size is None:
                raise RuntimeError("patchmean has no working size")
            return method.size
        return tuple(method.preprocessing.input_size)  # type: ignore[attr-defined, return-value]

    def verdicts(self, paths: Sequence[str], raw: torch.Tensor,
                 maps: Sequence[np.ndarray] | None = None) -> list[AnomalyScore]:
        normalised = self.scale.normalize(raw.numpy())
        return [
            AnomalyScore(path, float(norm), label_for(float(value), self.threshold), float(value),
                         maps[i] if maps is not None else None)
            for i, (path, value, norm) in enumerate(zip(paths, raw.tolist(), normalised,
                                                        strict=True))
        ]

    def score_paths(self, paths: Sequence[Path], batch_size: int = 16, with_maps: bool = False,
                    keep_images: bool = False, max_map_side: int | None = None,
                    normalized_maps: bool = True
                    ) -> Iterator[tuple[AnomalyScore | ImageFailure, Image.Image | None]]:
        """Scores image files in batches; an unreadable file yields an ``ImageFailure``.

        Yields (result, image) pairs; the image is the decoded RGB file when ``keep_images``
        (for overlays), else None. Maps come at the image's size, or with the long side capped
        at ``max_map_side`` (bounds memory over many large images); ``normalized_maps=False``
        keeps them in raw score units (see :meth:`full_maps`).
        """
        pending: list[tuple[Path, Image.Image]] = []

        def flush() -> Iterator[tuple[AnomalyScore, Image.Image | None]]:
            images = [image for _, image in pending]
            raw, patch_maps = self.raw_scores(images)
            maps = None
            if with_maps:
                sizes = [_capped(im.size, max_map_side) for im in images]
                maps = self.full_maps(patch_maps, sizes, normalized=normalized_maps)
            for (_, image), verdict in zip(pending, self.verdicts(
                    [str(p) for p, _ in pending], raw, maps), strict=True):
                yield verdict, (image if keep_images else None)

        for path in paths:
            try:
                image, _ = load_rgb(path)
            except ImageProblem as problem:
                yield ImageFailure(str(path), problem.reason), None
                continue
            pending.append((path, image))
            if len(pending) == batch_size:
                yield from flush()
                pending = []
        if pending:
            yield from flush()

    def save(self, path: Path, meta: BundleMeta, model: torch.nn.Module | None) -> Path:
        """Writes the bundle: meta with the ``anomaly`` record, weights and method tensors."""
        record = {**self.record, "method": self.method.name, "options": self.method.options(),
                  "threshold": self.threshold, "scale": self.scale.to_dict()}
        meta = meta.model_copy(update={"task": "anomaly", "labels": LABELS, "anomaly": record})
        return save_bundle(path, model, meta, tensors={ANOMALY_FILE: self.method.tensors()})


def _capped(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """``size`` (width, height) scaled down so its long side is at most ``max_side``."""
    if max_side is None:
        return size
    width, height = size
    factor = min(1.0, max_side / max(width, height))
    return max(1, round(width * factor)), max(1, round(height * factor))


def load_anomaly_detector(path: BundleSource, device: str = "auto", variant: str | None = None,
                          threads: int | None = None) -> AnomalyDetector:
    """Loads an anomaly bundle (safetensors and JSON only; nothing is unpickled).

    ``variant`` runs the feature extractor exported by `vitkit anomaly export` (e.g.
    ``openvino-bf16``; see :mod:`vitkit.anomaly.export`) instead of PyTorch; every score is
    still computed by the bundle's own code. None: the bundle's default (the variant
    `anomaly export` made last; torch-fp32 when none was made or its runtime is missing here,
    with a warning). ``path`` is a bundle folder or an opened :class:`~vitkit.bundle.Bundle`.
    """
    bundle = Bundle.open(path)
    path, meta = bundle.path, bundle.meta
    if meta.task != "anomaly":
        raise BundleError(f"{path} is a '{meta.task}' bundle; `vitkit anomaly` needs a bundle "
                          "written by `vitkit anomaly fit`.")
    raw_record = getattr(meta, "anomaly", None) or {}
    if not isinstance(raw_record, dict):
        raise BundleError(f"{path}/vitkit.json: 'anomaly' is a {type(raw_record).__name__}, not "
                          "the record `vitkit anomaly fit` writes; fit the bundle again.")
    record: dict[str, Any] = dict(raw_record)
    try:
        name = record["method"]
        options = dict(record["options"])
        threshold = float(record["threshold"])
        scale = ScoreScale.from_dict(record["scale"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}/vitkit.json has an incomplete 'anomaly' record ({exc}); "
                          "fit the bundle again.") from exc
    try:
        return _restore(path, meta, record, name, options, threshold, scale, device, variant,
                        threads)
    except VitkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - an edited record fails deep inside a method
        first = first_line(exc)
        raise BundleError(
            f"{path}: the {name!r} anomaly model cannot be restored from vitkit.json and "
            f"{ANOMALY_FILE} ({type(exc).__name__}: {first}); they were edited or do not "
            "belong together. Fit the bundle again with `vitkit anomaly fit`."
        ) from exc


def _restore(path: Path, meta: BundleMeta, record: dict[str, Any], name: str,
             options: dict[str, Any], threshold: float, scale: ScoreScale, device: str,
             variant: str | None, threads: int | None) -> AnomalyDetector:
    """The detector from a bundle's checked ``anomaly`` record (see
    :func:`load_anomaly_detector`)."""
    tensors = load_tensors(path, ANOMALY_FILE)
    method: AnomalyMethod
    if name == PatchMeanMethod.name:
        method = PatchMeanMethod.restore(options, tensors)
    else:
        pre = bundle_preprocessing(meta.preprocessing, path)
        extractor = rebuild_feature_backbone(BackboneSpec.from_dict(meta.backbone),
                                             record["layers"], tuple(pre.input_size))  # type: ignore[arg-type]
        load_weights(path, extractor)
        chosen = variant if variant is not None else _default_variant(path, record)
        if chosen != REFERENCE:
            from vitkit.anomaly.export import open_variant

            extractor = open_variant(path, record, chosen, threads)  # type: ignore[assignment]
            device = "cpu"
        method = restore_deep(name, options, tensors, extractor, pre, resolve_device(device))
    if variant not in (None, REFERENCE) and isinstance(method, PatchMeanMethod):
        raise BundleError(f"{path} is a patchmean bundle: it has no network to export, so it "
                          "has no variants.")
    detector = AnomalyDetector(method, threshold, scale, record)
    # One grey image through the whole method: tensors of the wrong shape in anomaly.safetensors
    # fail here, with the bundle named, rather than at the first image scored.
    height, width = detector.input_size
    with torch.inference_mode():
        detector.raw_scores([Image.new("RGB", (width, height), (128, 128, 128))])
    return detector


def _default_variant(path: Path, record: dict[str, Any]) -> str:
    import warnings

    from vitkit.anomaly.export import recorded_variants
    from vitkit.predictor.runtimes import RUNTIME_MODULES, available

    name = record.get("default_variant") or REFERENCE
    runtime = next((v.runtime for v in recorded_variants(path, record) if v.name == name), None)
    if name != REFERENCE and (runtime is None
                              or not available(RUNTIME_MODULES.get(runtime, runtime))):
        why = f"{runtime} is not installed" if runtime else "it is not in the bundle"
        warnings.warn(f"{path}: the default variant {name} cannot run here ({why}); scoring "
                      f"with {REFERENCE} instead", RuntimeWarning, stacklevel=3)
        return REFERENCE
    return name


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
