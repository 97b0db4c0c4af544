"""`vitkit detect export`: the detector's graph as ONNX (variant ``onnx-fp32``) or OpenVINO IR
converted from it (``openvino-fp32``), checked against PyTorch and recorded in the bundle.

What exports is :class:`~vitkit.detect.graph.DetectorGraph` (backbone, FPN and, for FCOS
and RetinaNet, the heads' convolutions), with a dynamic batch, height and width; box decoding
and NMS (and Faster R-CNN's proposals and box head) stay Python, shared by every runtime
(:mod:`vitkit.detect.export` says why). Parity is measured on real images (``--data``, else
the training data when it is still there; random images otherwise, and the record says so):
the graph's outputs, and the boxes and scores after decoding, against ``torch-fp32``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from vitkit.bundle import Bundle, update_meta
from vitkit.compress.export import staged
from vitkit.data.boxes import scan_detection
from vitkit.data.files import find_images
from vitkit.data.images import ImageProblem, load_rgb
from vitkit.detect.export import (
    ONNX_FILE,
    convert_to_openvino,
    export_graph,
    onnx_variant,
    openvino_variant,
)
from vitkit.detect.graph import Detection, DetectorGraph
from vitkit.detect.predict import Detector, load_detector
from vitkit.errors import VitkitError
from vitkit.predictor.runtimes import open_runtime
from vitkit.predictor.variants import REFERENCE_VARIANT, list_variants, record_variant

VARIANTS = ("onnx-fp32", "openvino-fp32")
PARITY_IMAGES = 8
BOX_TOLERANCE = 0.5  # px at the model's input size: boxes this close count as the same


def run_detect_export(bundle: Path | str, variant: str = "onnx-fp32", data: str | None = None,
                      n_images: int = PARITY_IMAGES, make_default: bool = False
                      ) -> dict[str, Any]:
    """Exports, measures and records ``variant``; returns ``{"bundle", "variant", "file",
    "runtime", "parity", "options", "default_variant"}`` where ``parity`` holds
    ``n_images``, ``images`` (their source), ``max_output_diff`` (graph outputs),
    ``max_box_diff`` (px at the input size), ``max_score_diff``, ``same_detections`` (share
    of images with the same boxes above the bundle's score threshold) and
    ``dynamic_size_diff`` (graph outputs at another input size)."""
    if variant not in VARIANTS:
        raise VitkitError(f"unknown detection variant {variant!r}; choose from "
                          f"{', '.join(VARIANTS)}.")
    opened = Bundle.open(bundle)
    reference = load_detector(opened, REFERENCE_VARIANT, "cpu")
    entry = onnx_variant() if variant == "onnx-fp32" else openvino_variant()
    assert entry.file is not None
    target = opened.path / entry.file
    graph = DetectorGraph(reference.model)
    with staged(target.parent) as folder:
        if variant == "onnx-fp32":
            options = export_graph(graph, folder / target.name, reference.size)
        else:
            options = _openvino_from_onnx(opened, graph, reference.size, folder / target.name)
    entry = entry.model_copy(update={"options": {**entry.options, **options,
                                                 "arch": reference.record.arch}})
    exported = load_detector_with(opened, reference, entry)
    batch, source = parity_batch(opened, reference, data, n_images)
    parity = measure_parity(reference, exported, batch)
    parity["images"] = source
    entry = entry.model_copy(update={"parity": parity})
    record_variant(opened.path, entry)
    if make_default:
        update_meta(opened.path, default_variant=entry.name)
    meta = Bundle.open(opened.path).meta
    return {"bundle": str(opened), "variant": entry.name, "file": entry.file,
            "runtime": entry.runtime, "parity": parity, "options": entry.options,
            "default_variant": (meta.model_extra or {}).get("default_variant")
            or REFERENCE_VARIANT}


def _openvino_from_onnx(bundle: Bundle, graph: DetectorGraph, size: int, path_xml: Path
                        ) -> dict[str, Any]:
    """Converts the bundle's ONNX graph when it has one (made from the same weights), else a
    graph exported on the side for the purpose."""
    recorded = {v.name: v for v in list_variants(bundle.meta, bundle.path)}.get("onnx-fp32")
    onnx_file = bundle.path / ONNX_FILE
    if recorded is not None and recorded.file == ONNX_FILE and onnx_file.is_file():
        keys = ("opset", "exporter", "input_name", "output_names", "traced_at")
        return {**{k: recorded.options[k] for k in keys if k in recorded.options},
                **convert_to_openvino(onnx_file, path_xml)}
    with tempfile.TemporaryDirectory() as folder:
        side = Path(folder) / "detector.onnx"
        options = export_graph(graph, side, size)
        return {**options, **convert_to_openvino(side, path_xml)}


def load_detector_with(bundle: Bundle, reference: Detector, entry: Any) -> Detector:
    """The bundle's detector on ``entry``'s runtime (the variant is not recorded yet)."""
    return Detector(reference.model, reference.record, open_runtime(bundle.path, entry, None))


def parity_batch(bundle: Bundle, detector: Detector, data: str | None, n_images: int
                 ) -> tuple[torch.Tensor, str]:
    """``(n, 3, S, S)`` images to compare on, and where they came from."""
    source = data or (bundle.meta.train.get("config") or {}).get("data")
    paths: list[Path] = []
    if source and Path(source).exists():
        try:
            paths = [item.image for item in scan_detection(source).items]
        except VitkitError:  # not annotated: a folder of plain images will do
            paths = find_images([str(source)])[0]
    images: list[torch.Tensor] = []
    for path in paths:
        if len(images) == n_images:
            break
        try:
            images.append(detector.model_input([detector.prepare(load_rgb(path)[0])])[0])
        except ImageProblem:
            continue
    if images:
        return torch.stack(images), f"{len(images)} images of {source}"
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(n_images, 3, detector.size, detector.size, generator=generator),
            f"{n_images} random images (no data to check on: pass --data)")


def measure_parity(reference: Detector, exported: Detector, batch: torch.Tensor
                   ) -> dict[str, Any]:
    """How closely ``exported`` reproduces ``reference`` on ``batch`` (see
    :func:`run_detect_export`)."""
    expected = reference.runtime.outputs(batch)
    got = exported.runtime.outputs(batch)
    output_diff = max(float((a - b).abs().max()) for a, b in zip(expected, got, strict=True))
    threshold = reference.record.score_threshold
    box_diff = score_diff = 0.0
    same = 0
    for a, b in zip(reference.raw(batch), exported.raw(batch), strict=True):
        kept_a, kept_b = _above(a, threshold), _above(b, threshold)
        if len(kept_a["scores"]) == len(kept_b["scores"]) and torch.equal(
                kept_a["labels"], kept_b["labels"]):
            if len(kept_a["scores"]):
                box_diff = max(box_diff, float((kept_a["boxes"] - kept_b["boxes"]).abs().max()))
                score_diff = max(score_diff,
                                 float((kept_a["scores"] - kept_b["scores"]).abs().max()))
            same += int(len(kept_a["scores"]) == 0 or float(
                (kept_a["boxes"] - kept_b["boxes"]).abs().max()) <= BOX_TOLERANCE)
    side = reference.size
    other = torch.rand(1, 3, side + 32, side + 64, generator=torch.Generator().manual_seed(1))
    dynamic_diff = max(float((a - b).abs().max()) for a, b in zip(
        reference.runtime.outputs(other), exported.runtime.outputs(other), strict=True))
    return {"n_images": int(batch.shape[0]), "max_output_diff": output_diff,
            "max_box_diff": box_diff, "max_score_diff": score_diff,
            "same_detections": same / max(1, int(batch.shape[0])),
            "dynamic_size_diff": dynamic_diff,
            "dynamic_size_checked": [side + 32, side + 64]}


def _above(detection: Detection, threshold: float) -> Detection:
    """Detections at or above ``threshold``, best first."""
    keep = detection["scores"] >= threshold
    order = detection["scores"][keep].argsort(descending=True)
    return {k: v[keep][order] for k, v in detection.items()}
