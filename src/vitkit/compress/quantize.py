"""Quantize a bundle's model and keep the result only when it stays accurate.

``quantize_bundle(bundle, method, runtime)`` builds one variant, measures it against the fp32
torch model on the validation images, and either records it in the bundle (with its measured
accuracy) or refuses with :class:`QuantizationRefused` when the accuracy drops by more than
``max_drop`` points. A refused variant leaves nothing behind: files are built in a hidden
staging folder under ``BUNDLE/variants`` and only renamed into place once the check passed.

Methods and runtimes (variant names in brackets):

================  ====================================  ===========================
method            openvino                              onnxruntime / torch
================  ====================================  ===========================
static (int8)     NNCF post-training [openvino-int8]    QDQ [onnx-int8] / –
dynamic (int8)    –                                     [onnx-dynamic-int8] /
                                                        Linear layers [torch-dynamic-int8]
bf16              fp32 IR, bf16 hint [openvino-bf16]    – / autocast [torch-bf16]
fp16              –                                     – / autocast [torch-fp16]
================  ====================================  ===========================

Static int8 is calibrated on the bundle's training images (or ``calib``); ViTs get NNCF's
transformer preset (mixed, SmoothQuant). The torch variants are built on load from the
weights, so only their measurements are recorded.

The runtimes' quantizers themselves are in :mod:`vitkit.compress.quantizers`. This module
(~480 lines) is one workflow — plan, stage, build, measure, keep or refuse — whose steps share
the :class:`Plan` and the staging folder; split further, each part would be read only beside
the others.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vitkit.bundle import BundleMeta, read_meta
from vitkit.compress.export import export_onnx, to_openvino
from vitkit.compress.quantizers import (
    pre_process_onnx,
    quantize_onnx_dynamic,
    quantize_onnx_static,
    quantize_openvino,
)
from vitkit.compress.reference import (
    Comparison,
    ReferenceImages,
    compare,
    image_batches,
    reference_images,
)
from vitkit.errors import DataError, VitkitError
from vitkit.predictor.runtimes import (
    OnnxRuntime,
    OpenVinoRuntime,
    Runtime,
    TorchRuntime,
    available,
    require,
)
from vitkit.predictor.variants import (
    REFERENCE_VARIANT,
    VARIANTS_DIR,
    Precision,
    Variant,
    record_variant,
    variants_dir,
)

Method = Literal["static", "dynamic", "bf16", "fp16"]
RuntimeChoice = Literal["openvino", "onnxruntime", "torch"]
METHODS: tuple[str, ...] = ("static", "dynamic", "bf16", "fp16")
RUNTIMES: tuple[str, ...] = ("openvino", "onnxruntime", "torch")
CALIBRATION_LIMIT = 300

# (runtime, method) -> (variant name, precision); a missing pair is not supported.
RECIPES: dict[tuple[str, str], tuple[str, Precision]] = {
    ("openvino", "static"): ("openvino-int8", "int8"),
    ("openvino", "bf16"): ("openvino-bf16", "bf16"),
    ("onnxruntime", "static"): ("onnx-int8", "int8"),
    ("onnxruntime", "dynamic"): ("onnx-dynamic-int8", "int8"),
    ("torch", "dynamic"): ("torch-dynamic-int8", "int8"),
    ("torch", "bf16"): ("torch-bf16", "bf16"),
    ("torch", "fp16"): ("torch-fp16", "fp16"),
}
# Modules each runtime needs (for the recipe) before anything is attempted.
NEEDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("openvino", "static"): ("openvino", "nncf"),
    ("openvino", "bf16"): ("openvino",),
    ("onnxruntime", "static"): ("onnx", "onnxruntime"),
    ("onnxruntime", "dynamic"): ("onnx", "onnxruntime"),
}
UNSUPPORTED_HINTS: dict[tuple[str, str], str] = {
    ("openvino", "dynamic"): "OpenVINO quantizes statically (calibrated); use --method static, "
                             "or --runtime onnxruntime / torch with --method dynamic.",
    ("openvino", "fp16"): "OpenVINO on a CPU runs half precision as bf16; use --method bf16.",
    ("onnxruntime", "bf16"): "ONNX Runtime's CPU provider has no fast bf16 kernels; use "
                             "--runtime openvino --method bf16 (or --runtime torch).",
    ("onnxruntime", "fp16"): "ONNX Runtime's CPU provider has no fast fp16 kernels; use "
                             "--runtime openvino --method bf16 (or --runtime torch).",
    ("torch", "static"): "torch quantizes Linear layers dynamically here; use --method dynamic, "
                         "or --runtime openvino / onnxruntime for static int8.",
}
_TRANSFORMER_MODEL_TYPES = {"vit", "deit", "beit", "dinov2", "swin", "swinv2", "convnext_v2_vit",
                            "data2vec-vision", "vit_mae", "vit_msn", "dinov3_vit", "siglip",
                            "clip_vision_model", "levit", "mobilevit", "mobilevitv2"}


class QuantizationRefused(VitkitError):
    """The quantized variant lost more accuracy than allowed; nothing was written."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class Plan:
    """What ``quantize_bundle`` will build."""

    runtime: str
    method: str
    variant: str
    precision: Precision

    @property
    def calibrated(self) -> bool:
        return self.method == "static"

    @property
    def builtin(self) -> bool:
        return self.runtime == "torch"


@dataclass
class QuantizeResult:
    """A recorded variant and what it was measured to cost."""

    bundle: Path
    variant: Variant
    comparison: Comparison | None
    method: str
    max_drop: float
    calibration: ReferenceImages | None = None
    validation: ReferenceImages | None = None
    size_mb: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _summary(self.bundle, self.variant, self.comparison, self.method, self.max_drop,
                        self.calibration, self.size_mb) | {"refused": False, "notes": self.notes}


def resolve_plan(method: str | None = None, runtime: str | None = None) -> Plan:
    """Picks the recipe: static int8 on the fastest installed runtime (OpenVINO with NNCF,
    then ONNX Runtime, then torch dynamic int8) unless told otherwise.

    Raises:
        VitkitError: an unknown or unsupported method/runtime, or a missing runtime.
    """
    if method is not None and method not in METHODS:
        raise VitkitError(f"--method must be one of {', '.join(METHODS)}, not {method!r}.")
    if runtime is not None and runtime not in RUNTIMES:
        raise VitkitError(f"--runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}.")
    if runtime is None:
        runtime = _default_runtime(method or "static")
    if method is None:
        method = "dynamic" if runtime == "torch" else "static"
    key = (runtime, method)
    if key not in RECIPES:
        raise VitkitError(f"--method {method} is not available on --runtime {runtime}. "
                          f"{UNSUPPORTED_HINTS.get(key, '')}".strip())
    for module in NEEDS.get(key, ()):
        require(module)  # a clear "pip install 'vitkit[...]'" error
    name, precision = RECIPES[key]
    return Plan(runtime, method, name, precision)


def _default_runtime(method: str) -> str:
    for runtime in RUNTIMES:
        key = (runtime, method)
        if key in RECIPES and all(available(m) for m in NEEDS.get(key, ())):
            return runtime
    if method == "static":
        return "torch"  # nothing calibrates here: fall back to torch dynamic int8
    raise VitkitError(f"no installed runtime supports --method {method}; pip install "
                      "'vitkit[openvino]' or 'vitkit[onnx]'.")


def is_transformer(model: nn.Module) -> bool:
    """Whether ``model`` (an ImageClassifier, timm or Hugging Face model) is a vision
    transformer, which wants NNCF's transformer preset."""
    inner = getattr(model, "model", model)
    if hasattr(inner, "patch_embed") and hasattr(inner, "blocks"):
        return True
    config = getattr(inner, "config", None)
    if config is not None and getattr(config, "model_type", None) in _TRANSFORMER_MODEL_TYPES:
        return True
    return any(type(m).__name__.endswith(("Attention", "SelfAttention"))
               or isinstance(m, nn.MultiheadAttention) for m in inner.modules())


# ------------------------------------------------------------------------------ the workflow
def quantize_bundle(bundle: Path | str, method: str | None = None, runtime: str | None = None,
                    calib: str | None = None, data: str | None = None, max_drop: float = 1.0,
                    calib_limit: int = CALIBRATION_LIMIT, batch_size: int = 32,
                    tome: int = 0, image_size: int | None = None,
                    log: Callable[[str], None] | None = None) -> QuantizeResult:
    """Builds, measures and (when the drop is within ``max_drop`` points) records a variant.

    Args:
        bundle: A classifier bundle.
        method: static | dynamic | bf16 | fp16 (default: static, dynamic on torch).
        runtime: openvino | onnxruntime | torch (default: the fastest installed).
        calib: Labelled image folder to calibrate on (default: the bundle's training images).
        data: Validation images (default: the bundle's validation split).
        max_drop: Largest accepted accuracy drop, in points, vs the fp32 torch model.
        calib_limit: Most calibration images used (class-balanced, seeded).
        tome: Tokens merged per block (ToMe, ViTs only) in the quantized graph; the variant
            is named ``<variant>-tome<r>``. Needs a file-based runtime (OpenVINO, ONNX Runtime).
        image_size: Run the model on its input resized to this many pixels (fewer tokens for
            a ViT made with ``dynamic_img_size``, less work for a CNN); the resize is inside
            the graph, so the variant takes the bundle's usual input. Named ``<variant>-<S>px``.
            Needs a file-based runtime. See :mod:`vitkit.compress.resolution`.
        log: Receives one-line progress messages.

    Raises:
        QuantizationRefused: the drop exceeded ``max_drop``; no file or record was left.
        DataError: static int8 without calibration images.
    """
    from vitkit.predictor.predict import load

    say = log or (lambda _message: None)
    bundle = Path(bundle)
    plan = resolve_plan(method, runtime)
    if tome:
        if plan.builtin:
            raise VitkitError("token merging needs a file-based runtime: use --runtime openvino "
                              "or onnxruntime (`vitkit bench --tome R` measures it on torch).")
        plan = dataclasses.replace(plan, variant=f"{plan.variant}-tome{tome}")
    if image_size:
        if plan.builtin:
            raise VitkitError("--image-size needs a file-based runtime: use --runtime openvino "
                              "or onnxruntime.")
        plan = dataclasses.replace(plan, variant=f"{plan.variant}-{image_size}px")
    meta = read_meta(bundle)
    if meta.task != "classify":
        raise VitkitError(f"{bundle} is a '{meta.task}' bundle; quantize works on classifiers.")
    validation = reference_images(meta, data, split="val")
    calibration = _calibration_images(meta, calib, calib_limit, plan) if plan.calibrated else None
    reference = load(bundle, variant=REFERENCE_VARIANT)
    assert reference.model is not None
    model: nn.Module = copy.deepcopy(reference.model).eval()  # wrapped below, maybe
    if tome:
        from vitkit.compress.tome import apply_tome

        model = apply_tome(model, tome)
    if image_size:
        from vitkit.compress.resolution import InputResized, check_resolution

        check_resolution(model, image_size, int(meta.preprocessing["input_size"][-1]))
        model = InputResized(model, image_size)
    notes: list[str] = []
    if validation is None:
        notes.append("no validation images (the bundle's training data is not where it was; "
                     "pass --data): accuracy unknown, --max-drop not checked")
    with _staging(bundle, plan) as staging:
        say(f"building {plan.variant}" + (f", calibrated on {calibration.source}"
                                          if calibration else ""))
        candidate, file, options = _build(plan, model, meta, calibration, staging, batch_size)
        comparison = None
        if validation is not None:
            say(f"measuring on {validation.source}")
            batches = list(image_batches(validation.samples, meta, batch_size))
            comparison = compare(reference, candidate, batches)
            _check_drop(bundle, plan, comparison, max_drop, calibration)
        del candidate  # release file handles before the files move
        size_mb = _size_mb(staging) if file is not None else None
        final_file = _commit(bundle, staging, plan, file)
    variant = _variant_record(plan, final_file, comparison, options | {
        "method": plan.method, "max_drop": max_drop, "tome_r": tome,
        "model_input_size": image_size, "validation": validation.source if validation else None})
    record_variant(bundle, variant)
    return QuantizeResult(bundle, variant, comparison, plan.method, max_drop, calibration,
                          validation, size_mb, notes)


def _variant_record(plan: Plan, file: str | None, comparison: Comparison | None,
                    options: dict[str, Any]) -> Variant:
    reference_accuracy = comparison.reference_accuracy if comparison else None
    return Variant(name=plan.variant, runtime=plan.runtime, precision=plan.precision, file=file,
                   parity=_parity(comparison),
                   accuracy=comparison.accuracy if comparison else None,
                   accuracy_drop=comparison.accuracy_drop if comparison else None,
                   options=options | {"reference_accuracy": reference_accuracy})


def _calibration_images(meta: BundleMeta, calib: str | None, limit: int, plan: Plan
                        ) -> ReferenceImages:
    found = reference_images(meta, calib, split="train", limit=limit)
    if found is None:
        dynamic = " --runtime onnxruntime" if plan.runtime == "openvino" else ""
        raise DataError(
            "static int8 needs calibration images and the bundle's training images are not "
            "where they were when it was trained. Pass --calib DATA (a folder of images like "
            f"the ones the model will see), or use --method dynamic{dynamic} or --method bf16, "
            "which need none.")
    return found


def _check_drop(bundle: Path, plan: Plan, comparison: Comparison, max_drop: float,
                calibration: ReferenceImages | None) -> None:
    drop = comparison.accuracy_drop
    if drop is None or drop <= max_drop:
        return
    assert comparison.accuracy is not None and comparison.reference_accuracy is not None
    per_image = 100.0 / comparison.n_images
    message = (
        f"{plan.variant} drops accuracy by {drop:.2f} points (accuracy "
        f"{comparison.accuracy:.4f} vs {comparison.reference_accuracy:.4f} for torch-fp32 on "
        f"{comparison.n_images} validation images; top-1 agreement "
        f"{comparison.top1_agreement:.4f}), more than --max-drop {max_drop:g}, so it was not "
        f"written. Try {_suggestions(plan, calibration, drop)}"
        + (f" With {comparison.n_images} validation images one image is {per_image:.2f} points;"
           " more validation images (--data) measure the drop more precisely."
           if per_image >= 1.0 else ""))
    details = _summary(bundle, Variant(name=plan.variant, runtime=plan.runtime,
                                       precision=plan.precision), comparison, plan.method,
                       max_drop, calibration, None)
    raise QuantizationRefused(message, details | {"refused": True, "notes": [], "message": message})


def _suggestions(plan: Plan, calibration: ReferenceImages | None, drop: float) -> str:
    tips: list[str] = []
    if plan.method in ("static", "dynamic"):
        tips.append("`--method bf16` (about half the fp32 latency, near-lossless)")
    if plan.runtime != "openvino" and plan.precision == "int8":
        tips.append("`--runtime openvino` (NNCF, with the transformer preset for ViTs)")
    if plan.calibrated and calibration is not None and len(calibration.samples) < 300:
        tips.append(f"more calibration images (`--calib DATA`; {len(calibration.samples)} used)")
    if plan.method == "dynamic" and plan.runtime != "onnxruntime":
        tips.append("`--runtime onnxruntime --method static`")
    tips.append(f"`--max-drop {max(1.0, np.ceil(drop * 10) / 10):g}` if that loss is acceptable")
    return ", ".join(tips[:-1]) + (", or " if len(tips) > 1 else "") + tips[-1] + "."


def _parity(comparison: Comparison | None) -> dict[str, Any] | None:
    if comparison is None:
        return None
    return {"max_abs_diff": comparison.max_abs_diff,
            "top1_agreement": comparison.top1_agreement, "n_images": comparison.n_images}


def _summary(bundle: Path, variant: Variant, comparison: Comparison | None, method: str,
             max_drop: float, calibration: ReferenceImages | None, size_mb: float | None
             ) -> dict[str, Any]:
    return {
        "bundle": str(bundle), "variant": variant.name, "runtime": variant.runtime,
        "precision": variant.precision, "method": method,
        "accuracy": comparison.accuracy if comparison else None,
        "reference_accuracy": comparison.reference_accuracy if comparison else None,
        "accuracy_drop": comparison.accuracy_drop if comparison else None,
        "agreement": comparison.top1_agreement if comparison else None,
        "max_abs_diff": comparison.max_abs_diff if comparison else None,
        "n_images": comparison.n_images if comparison else 0,
        "calibration_images": len(calibration.samples) if calibration else 0,
        "max_drop": max_drop, "size_mb": size_mb, "file": variant.file,
    }


# ----------------------------------------------------------------------- staging and commit
@contextlib.contextmanager
def _staging(bundle: Path, plan: Plan) -> Iterator[Path]:
    """A hidden folder under BUNDLE/variants, removed on the way out whatever happens (the
    variants folder too when this call created it and it is left empty)."""
    folder = bundle / VARIANTS_DIR
    created = not folder.exists()
    staging = Path(tempfile.mkdtemp(prefix=f".{plan.variant}.", dir=variants_dir(bundle)))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _commit(bundle: Path, staging: Path, plan: Plan, file: str | None) -> str | None:
    """Moves the staged files to BUNDLE/variants/<variant>/ (replacing an older copy) and
    returns the main file's path relative to the bundle."""
    if file is None:
        return None
    target = bundle / VARIANTS_DIR / plan.variant
    built = staging / "built"
    old = staging / "old"
    if target.exists():
        os.replace(target, old)
    os.replace(built, target)
    return f"{VARIANTS_DIR}/{plan.variant}/{file}"


def _size_mb(staging: Path) -> float:
    total = sum(p.stat().st_size for p in (staging / "built").rglob("*") if p.is_file())
    return round(total / 1e6, 3)


# ------------------------------------------------------------------------------ the recipes
def _build(plan: Plan, model: nn.Module, meta: BundleMeta,
           calibration: ReferenceImages | None, staging: Path, batch_size: int
           ) -> tuple[Runtime, str | None, dict[str, Any]]:
    """The candidate runtime, its main file name inside ``staging/built`` (None for torch
    built-ins) and the options to record."""
    if plan.builtin:
        return TorchRuntime(model, plan.precision, "cpu", plan.variant), None, {}
    built = staging / "built"
    built.mkdir()
    height, width = tuple(meta.preprocessing["input_size"])
    example = torch.zeros(1, 3, int(height), int(width))
    calib_arrays = _calibration_arrays(calibration, meta, batch_size)
    if plan.runtime == "openvino":
        return _build_openvino(plan, model, example, calib_arrays, built)
    return _build_onnx(plan, model, example, calib_arrays, built, staging)


def _calibration_arrays(calibration: ReferenceImages | None, meta: BundleMeta,
                        batch_size: int) -> list[np.ndarray]:
    """Calibration images as single-image float32 arrays (1, 3, H, W)."""
    if calibration is None:
        return []
    arrays = [image[None].numpy().astype(np.float32)
              for images, _ in image_batches(calibration.samples, meta, batch_size)
              for image in images]
    if not arrays:
        raise DataError(f"none of the calibration images in {calibration.source} could be read.")
    return arrays


def _build_openvino(plan: Plan, model: nn.Module, example: torch.Tensor,
                    calib: Sequence[np.ndarray], built: Path
                    ) -> tuple[Runtime, str, dict[str, Any]]:
    ov = require("openvino")
    ov_model = to_openvino(model, tuple(example.shape[-2:]))
    options: dict[str, Any] = {}
    if plan.method == "static":
        transformer = is_transformer(model)
        ov_model = quantize_openvino(ov_model, calib, transformer)
        options = {"quantization": "static", "tool": "nncf",
                   "preset": "mixed" if transformer else "performance",
                   "model_type": "transformer" if transformer else None,
                   "calibration_images": len(calib)}
    path = built / "model.xml"
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    runtime = OpenVinoRuntime(path, plan.precision, plan.variant)
    return runtime, path.name, options | {"inference_precision_hint": "bf16"}


def _build_onnx(plan: Plan, model: nn.Module, example: torch.Tensor,
                calib: Sequence[np.ndarray], built: Path, staging: Path
                ) -> tuple[Runtime, str, dict[str, Any]]:
    scratch = staging / "scratch"
    scratch.mkdir()
    fp32 = scratch / "model.fp32.onnx"
    exported = export_onnx(model, fp32, tuple(example.shape[-2:]))
    path = built / "model.onnx"
    if plan.method == "dynamic":
        quantize_onnx_dynamic(pre_process_onnx(fp32, scratch), path)
        options: dict[str, Any] = {"quantization": "dynamic", "weights": "int8 per-channel"}
    else:
        ops = quantize_onnx_static(pre_process_onnx(fp32, scratch), path, calib,
                                   is_transformer(model))
        options = {"quantization": "static", "format": "QDQ", "per_channel": True,
                   "op_types": ops, "calibration_images": len(calib)}
    shutil.rmtree(scratch)
    return OnnxRuntime(path, plan.precision, plan.variant), path.name, options | {
        "opset": exported["opset"]}
