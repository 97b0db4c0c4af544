"""`vitkit segment export`: a segment bundle's model for ONNX Runtime and OpenVINO, each file
checked against PyTorch and recorded in the bundle as a variant.

The graph's input is the preprocessed batch ``input (B, 3, H, W)``, its output the per-pixel
logits ``logits (B, C, H, W)``; batch, height and width are dynamic (any multiple of 32), so
one file serves every input size. Parity is measured on a few real images at the training
size and at a second size (to show the dynamic sides work): the largest absolute difference of
the logits and the share of pixels whose class agrees. The variants then run everywhere a
torch one does (``vitkit segment eval|predict --variant onnx-fp32``, ``bench``, ``serve``).
"""

from __future__ import annotations

import datetime as _dt
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from vitkit.bundle import Bundle, BundleSource, write_json_atomic
from vitkit.compress import export as ex
from vitkit.console import stderr_console
from vitkit.data.files import find_images
from vitkit.data.images import ImageProblem, load_rgb
from vitkit.data.joint import joint_transform
from vitkit.data.masks import find_segmentation_layout, scan_segmentation
from vitkit.errors import DataError, VitkitError, first_line
from vitkit.predictor.runtimes import RuntimeMissing, open_runtime
from vitkit.predictor.variants import VARIANTS_DIR, Variant, record_variant, variants_dir
from vitkit.segment.evaluate import select_split
from vitkit.segment.model import SIZE_MULTIPLE
from vitkit.segment.predict import SegmentPredictor

# variant -> (runtime, file under BUNDLE/variants): the names `vitkit export` gives a
# classifier's files, so a bundle's variants look alike whatever its task.
EXPORTS: dict[str, tuple[str, str]] = {
    "onnx-fp32": ("onnxruntime", "model.onnx"),
    "openvino-fp32": ("openvino", "openvino/model.xml"),
}
# The ONNX exporters in the order tried. Measured on torch 2.14, 2 cores, unet / fpn /
# deeplabv3plus / unetplusplus on tu-efficientnet_lite0 with a dynamic batch, height and
# width: the TorchScript-based exporter took 4.5-7 s, torch.export (dynamo) 22-38 s, and both
# graphs matched PyTorch within 1e-4 at 64x64 and 96x128 px. torch.export stays as the
# fallback for when the older exporter is gone or fails.
ONNX_EXPORTERS = ("torchscript", "dynamo")
MAX_ABS_DIFF = 1e-3  # logits of an fp32 export against PyTorch's
MIN_PIXEL_AGREEMENT = 0.999  # share of pixels whose class agrees
PARITY_IMAGES = 8
PREPROCESSING_FILE = "preprocessing.json"


def run_segment_export(bundle: BundleSource, variants: Sequence[str] = ("onnx-fp32",),
                       data: str | None = None, n_images: int = PARITY_IMAGES,
                       progress: bool = True) -> dict[str, Any]:
    """Exports the bundle's model for each variant, checks it and records it.

    Args:
        bundle: A segment bundle.
        variants: Names from :data:`EXPORTS`.
        data: Images to check on: a segmentation data folder (its val/test pairs' images), or
            image files / folders / globs. Default: the data the bundle was trained on; seeded
            random inputs when that is gone (the record says so).
        n_images: How many images the check runs on.
        progress: Say what is being exported on stderr.

    Returns:
        ``{"bundle", "images": what the check ran on, "variants": [{"name", "runtime",
        "precision", "file", "size_mb", "options", "parity": {"n_images", "sizes",
        "max_abs_diff", "pixel_agreement", "ok", "thresholds"}}]}``.

    Raises:
        VitkitError: An unknown variant, a runtime that is not installed, a failed export.
    """
    unknown = [v for v in variants if v not in EXPORTS]
    if unknown or not variants:
        raise VitkitError(f"unknown segment export variant(s) {', '.join(unknown) or '(none)'};"
                          f" choose from {', '.join(EXPORTS)}.")
    opened = Bundle.open(bundle)
    reference = SegmentPredictor.load(opened, variant="torch-fp32")
    model = reference.model
    assert model is not None  # torch-fp32 keeps the torch model
    size = reference.input_size
    batches, source = _parity_batches(reference, data, n_images)
    expected = {key: reference.logits(batch) for key, batch in batches.items()}
    _write_preprocessing(opened)
    entries: list[dict[str, Any]] = []
    onnx_options: dict[str, Any] | None = None
    for name in dict.fromkeys(variants):
        runtime, file = EXPORTS[name]
        if progress:
            stderr_console.print(f"exporting [bold]{name}[/] …")
        target = variants_dir(opened.path) / file
        try:
            with ex.staged(target.parent) as staging:
                if name == "onnx-fp32":
                    options = onnx_options = ex.export_onnx(
                        model, staging / target.name, size, size_multiple=SIZE_MULTIPLE,
                        exporters=ONNX_EXPORTERS)
                else:
                    options = _export_openvino(model, staging / target.name, size,
                                               opened.path / VARIANTS_DIR / EXPORTS["onnx-fp32"][1]
                                               if onnx_options else None)
        except VitkitError:  # a runtime not installed, both ONNX exporters failed
            raise
        except Exception as exc:  # noqa: BLE001 - converters fail on ops they lack
            raise VitkitError(f"{name} export failed for this model: "
                              f"{first_line(exc, 400)}") from exc
        variant = Variant(name=name, runtime=runtime, precision="fp32",  # type: ignore[arg-type]
                          file=f"{VARIANTS_DIR}/{file}", options=options)
        checked = _parity(opened.path, variant, batches, expected, source)
        if not checked["ok"]:
            stderr_console.print(f"[bold yellow]warning[/]: {name} parity check FAILED (max abs "
                                 f"diff {checked['max_abs_diff']:.3g}, pixel agreement "
                                 f"{checked['pixel_agreement']:.4f}); it is recorded but do "
                                 "not serve it without checking.")
        variant = variant.model_copy(update={
            "parity": checked,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")})
        record_variant(opened.path, variant)
        entries.append({**variant.model_dump(mode="json", exclude_none=True),
                        "size_mb": round(_size_bytes(target) / 1e6, 3)})
    return {"bundle": str(opened.path), "images": source, "variants": entries}


def _export_openvino(model: torch.nn.Module, path: Path, size: tuple[int, int],
                     onnx_file: Path | None) -> dict[str, Any]:
    """OpenVINO IR from the ONNX graph (dynamic sides), exporting one on the side when this
    run made none; from the PyTorch model (fixed sides) when ONNX is not installed."""
    if onnx_file is not None:
        options = ex.export_openvino(model, path, size, onnx_file=onnx_file)
        return {**options, "dynamic_size": True, "size_multiple": SIZE_MULTIPLE}
    try:
        with tempfile.TemporaryDirectory() as folder:
            side = Path(folder) / "model.onnx"
            ex.export_onnx(model, side, size, size_multiple=SIZE_MULTIPLE,
                           exporters=ONNX_EXPORTERS)
            options = ex.export_openvino(model, path, size, onnx_file=side)
        return {**options, "dynamic_size": True, "size_multiple": SIZE_MULTIPLE}
    except RuntimeMissing:
        return {**ex.export_openvino(model, path, size), "dynamic_size": False}


def _parity_batches(reference: SegmentPredictor, data: str | None, n_images: int
                    ) -> tuple[dict[tuple[int, int], torch.Tensor], str]:
    """The check's inputs at the training size and, for the dynamic sides, at a second one
    (taller by 32 px, wider by 64), and a description of where they came from."""
    height, width = reference.input_size
    sizes = [(height, width), (height + SIZE_MULTIPLE, width + 2 * SIZE_MULTIPLE)]
    images, source = _parity_images(reference, data, n_images)
    mean, std = reference.preprocessing.mean, reference.preprocessing.std
    batches: dict[tuple[int, int], torch.Tensor] = {}
    for size in sizes:
        if images:
            transform = joint_transform(size, train=False, mean=mean, std=std)
            batches[size] = torch.stack([
                transform(tv_tensors.Image(TF.pil_to_tensor(image))).as_subclass(torch.Tensor)
                for image in images])
        else:
            generator = torch.Generator().manual_seed(size[0] * 10_007 + size[1])
            batches[size] = torch.randn(4, 3, *size, generator=generator)
    return batches, source


def _parity_images(reference: SegmentPredictor, data: str | None, n_images: int
                   ) -> tuple[list[Any], str]:
    """Up to ``n_images`` decoded images: from ``data``, else from the bundle's training data
    (its test or val pairs), else none (the check then runs on random inputs)."""
    source = data or (reference.bundle.meta.train.get("config") or {}).get("data")
    paths: list[Path] = []
    if source:
        try:
            find_segmentation_layout(source)
        except DataError:
            if data is not None:
                paths = find_images([data])[0]
        else:
            _, chosen = select_split(scan_segmentation(source).pairs)
            paths = [p.image for p in chosen]
    images = []
    for path in paths:
        try:
            images.append(load_rgb(path)[0])
        except ImageProblem:
            continue
        if len(images) == n_images:
            break
    if not images:
        if data is not None:
            raise DataError(f"no readable images in {data} to check the export on. Give a "
                            "segmentation data folder, image files, folders or globs.")
        return [], ("random inputs (4 per size): the bundle's training data is not where it "
                    "was; pass --data with a few images to check on real ones")
    return images, f"{len(images)} images from {source}"


def _parity(bundle: Path, variant: Variant, batches: dict[tuple[int, int], torch.Tensor],
            expected: dict[tuple[int, int], torch.Tensor], source: str) -> dict[str, Any]:
    runtime = open_runtime(bundle, variant, None)
    dynamic = bool(variant.options.get("dynamic_size"))
    worst, agree, pixels, sizes = 0.0, 0, 0, []
    for index, (size, batch) in enumerate(batches.items()):
        if index and not dynamic:
            break
        got, want = runtime(batch), expected[size]
        if got.shape != want.shape:
            raise VitkitError(f"{variant.name} returned logits of shape {tuple(got.shape)} for "
                              f"an input of {tuple(batch.shape)}; expected {tuple(want.shape)}.")
        worst = max(worst, float((got - want).abs().max()))
        agree += int((got.argmax(1) == want.argmax(1)).sum())
        pixels += want[:, 0].numel()
        sizes.append(list(size))
    agreement = agree / max(pixels, 1)
    return {"n_images": len(next(iter(batches.values()))), "images": source, "sizes": sizes,
            "max_abs_diff": round(worst, 8), "pixel_agreement": round(agreement, 6),
            "ok": worst <= MAX_ABS_DIFF and agreement >= MIN_PIXEL_AGREEMENT,
            "thresholds": {"max_abs_diff": MAX_ABS_DIFF,
                           "pixel_agreement": MIN_PIXEL_AGREEMENT}}


def _write_preprocessing(bundle: Bundle) -> Path:
    """``variants/preprocessing.json``: what a program feeding an exported file must do."""
    meta = bundle.meta
    pre = meta.preprocessing
    path = variants_dir(bundle.path) / PREPROCESSING_FILE
    write_json_atomic(path, {
        "task": "segment",
        "labels": list(meta.labels),
        "preprocessing": pre,
        "input": {"name": ex.INPUT_NAME, "shape": ["batch", 3, "height", "width"],
                  "dtype": "float32", "layout": "NCHW", "color": "RGB",
                  "steps": [f"resize the whole image ({pre.get('interpolation')}, no crop) to "
                            f"{pre.get('input_size')} (height, width; any multiple of "
                            f"{SIZE_MULTIPLE} runs)", "scale pixels to 0..1",
                            f"subtract mean {list(pre.get('mean', []))}, divide by std "
                            f"{list(pre.get('std', []))}"]},
        "output": {"name": ex.OUTPUT_NAME, "shape": ["batch", len(meta.labels), "height",
                                                     "width"],
                   "meaning": "per-pixel logits; argmax over axis 1 is the class index in "
                              "labels order; resize that mask back to the image (nearest)"},
    })
    return path


def _size_bytes(main: Path) -> int:
    """The main file plus the weights beside it (``.bin`` of OpenVINO, ``.data`` of ONNX)."""
    companions = [main, main.with_suffix(".bin"), main.with_name(main.name + ".data")]
    return sum(p.stat().st_size for p in dict.fromkeys(companions) if p.is_file())
