"""`vitkit anomaly export`: the bundle's feature extractor on OpenVINO / ONNX Runtime, with its
score parity against PyTorch measured on real images and recorded in the bundle."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.anomaly.detector import AnomalyDetector, load_anomaly_detector
from vitkit.anomaly.export import REFERENCE, VARIANTS, export_features, open_extractor, template
from vitkit.anomaly.methods import PatchMeanMethod
from vitkit.bundle import update_meta
from vitkit.data import load_rgb
from vitkit.data.files import find_images
from vitkit.data.mvtec import normal_images
from vitkit.errors import DataError, VitkitError

PARITY_IMAGES = 16


def run_anomaly_export(bundle: Path | str, variants: Sequence[str] = ("openvino-bf16",),
                       data: str | None = None, n_images: int = PARITY_IMAGES,
                       make_default: bool = True) -> dict[str, Any]:
    """Exports the feature extractor for each variant, measures its scores against PyTorch on
    ``n_images`` images (``data``, default the bundle's normal images) and records it; with
    ``make_default`` the last one becomes the variant `anomaly score` / `eval` / `serve` use.

    Returns ``{"bundle", "variants": [{"name", "runtime", "precision", "file", "parity"}],
    "default_variant"}``;
    ``parity`` holds ``n_images``, ``max_score_diff`` (normalised scores, 0.5 = threshold),
    ``max_map_diff`` (normalised maps), ``max_raw_rel_diff`` and ``label_agreement``.

    Raises:
        VitkitError: a patchmean bundle, an unknown variant, or no images to check on.
    """
    bundle = Path(bundle)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise VitkitError(f"unknown anomaly variant(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(VARIANTS)}")
    templates = [template(name) for name in variants]
    reference = load_anomaly_detector(bundle, "cpu", variant=REFERENCE)
    if isinstance(reference.method, PatchMeanMethod):
        raise VitkitError(f"{bundle} is a patchmean bundle: there is no network to export "
                          "(it already scores in milliseconds).")
    images = _parity_images(reference, data, n_images)
    extractor = reference.method.extractor  # type: ignore[attr-defined]
    written: dict[str, str] = {}
    for variant in templates:
        if variant.file not in written:
            written[str(variant.file)] = export_features(extractor, bundle, variant.name,
                                                         reference.input_size)
    expected_raw, expected_maps = reference.raw_scores(images)
    entries = []
    for variant in templates:
        reference.method.extractor = open_extractor(bundle, variant)  # type: ignore[attr-defined]
        try:
            raw, maps = reference.raw_scores(images)
        finally:
            reference.method.extractor = extractor  # type: ignore[attr-defined]
        measured = variant.model_copy(update={
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "parity": _parity(reference, expected_raw.numpy(), raw.numpy(),
                              expected_maps.numpy(), maps.numpy())})
        entries.append(measured.model_dump(mode="json", exclude_none=True))
    record = dict(reference.record)
    kept = [v for v in record.get("variants", []) if v["name"] not in set(variants)]
    record["variants"] = kept + entries
    if make_default:
        record["default_variant"] = variants[-1]
    update_meta(bundle, anomaly=record)
    return {"bundle": str(bundle), "variants": entries,
            "default_variant": record.get("default_variant") or REFERENCE}


def _parity_images(detector: AnomalyDetector, data: str | None, n_images: int) -> list[Any]:
    source = data or detector.record.get("data")
    folder = normal_images(str(source)) if source and Path(str(source)).exists() else None
    if folder is None:
        raise DataError("the bundle's normal images are not where they were when it was fitted; "
                        "pass --data with a few images like those it will score.")
    paths, _ = find_images([str(folder)])
    if not paths:
        raise DataError(f"no images in {folder} to check the exported scores on.")
    return [load_rgb(p)[0] for p in paths[:n_images]]


def _parity(detector: AnomalyDetector, expected: np.ndarray, got: np.ndarray,
            expected_maps: np.ndarray, got_maps: np.ndarray) -> dict[str, Any]:
    scale = detector.scale
    normal_expected, normal_got = scale.normalize(expected), scale.normalize(got)
    labels_expected = expected >= detector.threshold
    labels_got = got >= detector.threshold
    return {
        "n_images": int(len(expected)),
        "max_score_diff": round(float(np.abs(normal_expected - normal_got).max()), 6),
        "max_map_diff": round(float(np.abs(scale.normalize(expected_maps)
                                           - scale.normalize(got_maps)).max()), 6),
        "max_raw_rel_diff": round(float((np.abs(expected - got)
                                         / np.maximum(np.abs(expected), 1e-12)).max()), 6),
        "label_agreement": float((labels_expected == labels_got).mean()),
    }
