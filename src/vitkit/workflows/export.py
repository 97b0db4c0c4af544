"""`vitkit export`: a bundle's model written for other runtimes, each checked right away.

For every format: the files go to ``BUNDLE/variants/`` atomically, the preprocessing and labels
go beside them (``variants/preprocessing.json``), and the new file is run on the bundle's
validation images (or ``--data``) against the fp32 torch model: max abs diff of the logits,
top-1 agreement, accuracy. Runtimes the Predictor runs (ONNX Runtime, OpenVINO, TorchScript)
become variants (``vitkit.load(bundle, variant="onnx-fp32")``, ``bench``, ``serve``); files
for other devices (the mobile ``.ptl``, TFLite) are recorded under ``exports`` in
``vitkit.json``: they are checked here with the interpreter a phone uses, but a server should
not pick them.
"""

from __future__ import annotations

import datetime as _dt
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitkit.backbones import BackboneSpec, ImageClassifier, rebuild
from vitkit.bundle import (
    Bundle,
    BundleMeta,
    BundleSource,
    load_weights,
    read_meta,
    update_meta,
    write_json_atomic,
)
from vitkit.compress import export as ex
from vitkit.compress.reference import compare, image_batches, reference_images
from vitkit.console import stderr_console
from vitkit.data import Preprocessing
from vitkit.errors import BundleError, VitkitError, first_line
from vitkit.predictor.runtimes import RuntimeMissing, TorchRuntime, open_runtime
from vitkit.predictor.variants import VARIANTS_DIR, Variant, record_variant, variants_dir

# Parity an fp32 export must reach; below it the export is stored with a loud warning.
MAX_ABS_DIFF = 1e-3
MIN_TOP1_AGREEMENT = 0.99
REFERENCE_LIMIT = 256  # validation images the parity check runs on, at most
DYNAMIC_BATCHES = (1, 3)  # extra batch sizes every dynamic-batch export is run at
PREPROCESSING_FILE = "preprocessing.json"


@dataclass(frozen=True)
class Format:
    """One export target: where its file goes and how it is made, run and recorded."""

    name: str  # what --format takes
    variant: str  # the record's name
    runtime: str  # runtime of the variant, or the file format of an `exports` entry
    file: str  # main file, relative to BUNDLE/variants
    predictor: bool  # True: a variant the Predictor runs; False: an `exports` entry
    extra: str  # what to install when its package is missing


FORMATS: dict[str, Format] = {
    f.name: f for f in (
        Format("onnx", "onnx-fp32", "onnxruntime", "model.onnx", True,
               "pip install 'vitkit[onnx]'"),
        Format("openvino", "openvino-fp32", "openvino", "openvino/model.xml", True,
               "pip install 'vitkit[openvino]'"),
        Format("torchscript", "torchscript-fp32", "torchscript", "model.torchscript.pt", True,
               "nothing (torch)"),
        Format("mobile", "mobile-fp32", "torchscript-lite", "model.ptl", False,
               "nothing (torch)"),
        Format("tflite", "tflite-fp32", "tflite", "model.tflite", False,
               "pip install litert-torch"),
        Format("coreml", "coreml-fp32", "coreml", "model.mlpackage", False, "coremltools"),
    )
}
ALL_FORMATS = ("onnx", "openvino", "torchscript", "mobile")  # what --format all makes


@dataclass
class ExportRecord:
    """What one format produced (or why it did not)."""

    name: str
    format: str
    runtime: str
    precision: str = "fp32"
    file: str | None = None
    size_mb: float | None = None
    parity: dict[str, Any] | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None  # why nothing was written
    warning: str | None = None  # parity below the bar

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "format": self.format, "runtime": self.runtime,
            "precision": self.precision, "file": self.file, "size_mb": self.size_mb,
            "parity": self.parity, "accuracy": self.accuracy,
            "accuracy_drop": self.accuracy_drop, "options": self.options}
        if self.skipped:
            out["skipped"] = self.skipped
        if self.warning:
            out["warning"] = self.warning
        return out


@dataclass
class ExportResult:
    bundle: str
    exports: list[ExportRecord]
    reference: str  # what the parity check ran on

    @property
    def succeeded(self) -> list[ExportRecord]:
        return [r for r in self.exports if r.skipped is None]

    @property
    def warnings(self) -> list[str]:
        return [f"{r.name}: {r.warning}" for r in self.exports if r.warning]

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "reference": self.reference,
                "exports": [r.to_dict() for r in self.succeeded],
                "skipped": [{"format": r.format, "reason": r.skipped}
                            for r in self.exports if r.skipped],
                "warnings": self.warnings}


def parse_formats(formats: Sequence[str]) -> list[str]:
    """``["onnx,openvino"]``, ``["all"]``, … -> known format names, in order, once each."""
    names: list[str] = []
    for item in formats:
        for part in str(item).replace(" ", "").lower().split(","):
            if not part:
                continue
            chosen = ALL_FORMATS if part == "all" else (part,)
            for name in chosen:
                if name not in FORMATS:
                    raise VitkitError(f"unknown export format {name!r}; choose from "
                                      f"{', '.join(FORMATS)} or all.")
                if name not in names:
                    names.append(name)
    if not names:
        raise VitkitError(f"no export format given; choose from {', '.join(FORMATS)} or all.")
    return names


def run_export(bundle: BundleSource, formats: Sequence[str] = ("all",), data: str | None = None,
               batch_size: int = 32, opset: int | None = None, progress: bool = True
               ) -> ExportResult:
    """Exports the bundle's model to each format, checks each against PyTorch, records it.

    A format whose package is missing is skipped (the reason names what to install); so is one
    whose conversion fails when several were asked for. Raises VitkitError when none worked.
    """
    names = parse_formats(formats)
    if "coreml" in names:
        raise VitkitError(ex.COREML_MESSAGE)
    opened = Bundle.open(bundle)
    bundle, meta = opened.path, _classifier_meta(opened)
    model = _torch_model(bundle, meta)
    input_size = tuple(Preprocessing.model_validate(meta.preprocessing).input_size)
    batches, source = _parity_batches(meta, data, batch_size, input_size)
    write_preprocessing(bundle, meta)
    reference = _Memo(TorchRuntime(model, "fp32"))
    probes = [ex.example_input(input_size, n, seed=10 + n) for n in DYNAMIC_BATCHES]
    records: list[ExportRecord] = []
    for name in names:
        fmt = FORMATS[name]
        if progress:
            stderr_console.print(f"exporting [bold]{name}[/] …")
        onnx_file = _fresh_onnx(bundle, records)
        try:
            record = _export_one(bundle, fmt, model, input_size, opset, onnx_file)
        except RuntimeMissing as missing:
            record = ExportRecord(fmt.variant, name, fmt.runtime, skipped=str(missing))
        except VitkitError as failed:
            if len(names) == 1:
                raise
            record = ExportRecord(fmt.variant, name, fmt.runtime, skipped=str(failed))
        else:
            _check(bundle, fmt, record, reference, batches, source, probes)
            _record(bundle, fmt, record)
        records.append(record)
    result = ExportResult(str(bundle), records, source)
    if not result.succeeded:
        reasons = "; ".join(f"{r.format}: {r.skipped}" for r in records)
        raise VitkitError(f"no format could be exported ({reasons}).")
    return result


def _classifier_meta(bundle: Bundle) -> BundleMeta:
    meta = bundle.meta
    if meta.task != "classify":
        raise BundleError(f"{bundle} is a '{meta.task}' bundle; `vitkit export` exports "
                          "classifiers.")
    return meta


def _torch_model(bundle: Path, meta: BundleMeta) -> ImageClassifier:
    model = rebuild(BackboneSpec.from_dict(meta.backbone), num_classes=len(meta.labels))
    load_weights(bundle, model.model)
    return model.eval()


def _parity_batches(meta: BundleMeta, data: str | None, batch_size: int,
                    input_size: tuple[int, ...]
                    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    """Validation images of the bundle (or ``data``); seeded random inputs when there are
    none (accuracy then stays unknown and the record says so)."""
    images = reference_images(meta, data, limit=REFERENCE_LIMIT)
    if images is not None:
        batches = list(image_batches(images.samples, meta, batch_size))
        if batches:
            return batches, images.source
    generator = torch.Generator().manual_seed(0)
    random = torch.randn(16, 3, *input_size, generator=generator)
    labels = torch.full((16,), -1)
    return ([(random[:8], labels[:8]), (random[8:], labels[8:])],
            "random inputs (16): no validation images found for this bundle; pass --data "
            "with labelled images to check on real ones")


def write_preprocessing(bundle: Path, meta: BundleMeta) -> Path:
    """``variants/preprocessing.json``: what a program feeding an exported file must do."""
    prep = Preprocessing.model_validate(meta.preprocessing)
    path = variants_dir(bundle) / PREPROCESSING_FILE
    write_json_atomic(path, {
        "labels": list(meta.labels),
        "preprocessing": meta.preprocessing,
        "input": {"name": ex.INPUT_NAME, "shape": ["batch", 3, *prep.input_size],
                  "dtype": "float32", "layout": "NCHW", "color": "RGB",
                  "steps": [f"resize ({prep.interpolation}) so that a {prep.crop_mode} crop "
                            f"of crop_pct={prep.crop_pct} gives {prep.input_size[0]}x"
                            f"{prep.input_size[1]}", "scale pixels to 0..1",
                            f"subtract mean {list(prep.mean)}, divide by std "
                            f"{list(prep.std)}"]},
        "output": {"name": ex.OUTPUT_NAME, "shape": ["batch", len(meta.labels)],
                   "meaning": "logits; softmax gives class probabilities in labels order"},
    })
    return path


def _fresh_onnx(bundle: Path, records: list[ExportRecord]) -> Path | None:
    """The ONNX file exported earlier in this run if it passed its parity check."""
    for record in records:
        if record.format == "onnx" and record.file and (record.parity or {}).get("ok"):
            return bundle / record.file
    return None


def _export_one(bundle: Path, fmt: Format, model: ImageClassifier,
                input_size: tuple[int, ...], opset: int | None, onnx_file: Path | None = None
                ) -> ExportRecord:
    exporter = _exporters(opset, onnx_file)[fmt.name]
    target = variants_dir(bundle) / fmt.file
    try:
        with ex.staged(target.parent) as staging:
            options = exporter(model, staging / target.name, input_size)
    except VitkitError:
        raise
    except Exception as exc:  # noqa: BLE001 - converters fail on ops they lack, model by model
        first = first_line(exc, 400)
        raise VitkitError(f"{fmt.name} export failed for this model: {first}") from exc
    return ExportRecord(fmt.variant, fmt.name, fmt.runtime,
                        file=f"{VARIANTS_DIR}/{fmt.file}",
                        size_mb=round(_size_bytes(target) / 1e6, 3), options=options)


def _exporters(opset: int | None, onnx_file: Path | None) -> dict[str, ex.Exporter]:
    return {"onnx": functools.partial(ex.export_onnx, opset=opset),
            "openvino": functools.partial(ex.export_openvino, onnx_file=onnx_file),
            "torchscript": ex.export_torchscript,
            "mobile": ex.export_mobile, "tflite": ex.export_tflite,
            "coreml": ex.export_coreml}


def _size_bytes(main: Path) -> int:
    """The main file plus the weights beside it (``.bin`` of OpenVINO, ``.data`` of ONNX)."""
    companions = [main, main.with_suffix(".bin"), main.with_name(main.name + ".data")]
    return sum(p.stat().st_size for p in dict.fromkeys(companions) if p.is_file())


def _runner(bundle: Path, fmt: Format, record: ExportRecord) -> Callable[[torch.Tensor],
                                                                       torch.Tensor]:
    path = bundle / str(record.file)
    if fmt.name == "mobile":
        return ex.LiteRunner(path)
    if fmt.name == "tflite":
        return ex.TfliteRunner(path)
    variant = Variant(name=fmt.variant, runtime=fmt.runtime,  # type: ignore[arg-type]
                      precision="fp32", file=record.file)
    return open_runtime(bundle, variant, None)


class _Memo:
    """The fp32 torch model's logits, computed once per batch object for all formats."""

    def __init__(self, runtime: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.runtime = runtime
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        hit = self.cache.get(id(batch))
        if hit is None or hit[0] is not batch:
            hit = (batch, self.runtime(batch))
            self.cache[id(batch)] = hit
        return hit[1]


def _check(bundle: Path, fmt: Format, record: ExportRecord, reference: _Memo,
           batches: list[tuple[torch.Tensor, torch.Tensor]], source: str,
           probes: list[torch.Tensor]) -> None:
    """Parity on the reference batches (and at batch 1 and 3 for a dynamic batch)."""
    candidate = _runner(bundle, fmt, record)
    if not record.options.get("dynamic_batch", True):
        batches = [(images[i:i + 1], labels[i:i + 1])
                   for images, labels in batches for i in range(len(images))]
        reference = _Memo(reference.runtime)  # slices are new tensors each time
    comparison = compare(reference, candidate, batches)
    real = bool((torch.cat([labels for _, labels in batches]) >= 0).all())  # not random
    parity: dict[str, Any] = {
        "n_images": comparison.n_images, "max_abs_diff": comparison.max_abs_diff,
        "top1_agreement": comparison.top1_agreement, "images": source,
        "thresholds": {"max_abs_diff": MAX_ABS_DIFF, "top1_agreement": MIN_TOP1_AGREEMENT}}
    if record.options.get("dynamic_batch", True):
        parity["batch_sizes"] = sorted({len(images) for images, _ in batches}
                                       | {len(x) for x in probes})
        worst, bad_sizes = _batch_size_diff(reference, candidate, probes)
        parity["max_abs_diff"] = max(parity["max_abs_diff"], worst)
        if bad_sizes:
            parity["failed_batch_sizes"] = bad_sizes
    else:
        parity["batch_sizes"] = [1]
    failed = (parity["max_abs_diff"] > MAX_ABS_DIFF or bool(parity.get("failed_batch_sizes"))
              or parity["top1_agreement"] < MIN_TOP1_AGREEMENT)
    parity["ok"] = not failed
    if failed:
        sizes = parity.get("failed_batch_sizes")
        record.warning = ((f"does not run at batch sizes {sizes}; " if sizes else "")
                          + f"parity check FAILED: max abs diff {parity['max_abs_diff']:.3g} "
                          f"(limit {MAX_ABS_DIFF}), top-1 agreement "
                          f"{parity['top1_agreement']:.3f} (limit {MIN_TOP1_AGREEMENT}) "
                          f"against PyTorch fp32. Do not deploy {record.file} without "
                          "checking it.")
        parity["warning"] = record.warning
    record.parity = parity
    if real:
        record.accuracy = comparison.accuracy
        record.accuracy_drop = comparison.accuracy_drop
        parity["reference_accuracy"] = comparison.reference_accuracy


def _batch_size_diff(reference: _Memo, candidate: Callable[[torch.Tensor], torch.Tensor],
                     probes: list[torch.Tensor]) -> tuple[float, list[int]]:
    """Largest logit difference at the probe batch sizes, and the sizes that failed."""
    worst, failed = 0.0, []
    for x in probes:
        try:
            got = candidate(x)
        except Exception:  # noqa: BLE001 - a runtime rejecting the shape is what we look for
            failed.append(len(x))
            continue
        if got.shape != reference(x).shape:
            failed.append(len(x))
            continue
        worst = max(worst, float((reference(x) - got).abs().max()))
    return float(f"{worst:.3g}"), failed


def _record(bundle: Path, fmt: Format, record: ExportRecord) -> None:
    """A variant entry (Predictor runtimes) or an ``exports`` entry (files for devices)."""
    options = {**record.options, "preprocessing": f"{VARIANTS_DIR}/{PREPROCESSING_FILE}"}
    if fmt.predictor:
        record_variant(bundle, Variant(
            name=record.name, runtime=fmt.runtime,  # type: ignore[arg-type]
            precision="fp32", file=record.file, parity=record.parity,
            accuracy=record.accuracy, accuracy_drop=record.accuracy_drop, options=options))
        return
    meta = read_meta(bundle)
    entries = [e for e in (getattr(meta, "exports", None) or []) if e.get("name") != record.name]
    entries.append({**record.to_dict(), "options": options,
                    "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")})
    update_meta(bundle, exports=entries)


def list_exports(meta: BundleMeta) -> list[dict[str, Any]]:
    """The device files recorded under ``exports`` (mobile, TFLite)."""
    return list(getattr(meta, "exports", None) or [])
