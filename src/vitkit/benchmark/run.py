"""Benchmark every variant of a bundle: size, parameters, accuracy vs fp32, latency, throughput,
peak memory, load time.

All variants are measured in one process, one after another, on the same random input (speed)
and the same validation images (accuracy); the torch fp32 model is the reference for agreement
and accuracy drop. A variant that cannot run here (runtime not installed, file missing) is
reported as skipped with the reason, never dropped silently; accuracy is ``None`` when there are
no labelled images, never guessed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from vitkit.benchmark.timing import Budget, Latency, PeakRss, measure_latency, measure_throughput
from vitkit.bundle import WEIGHTS_FILE, Bundle, BundleMeta, BundleSource
from vitkit.errors import BundleError, DataError, VitkitError
from vitkit.predictor import runtimes
from vitkit.predictor.predict import load
from vitkit.predictor.variants import (
    REFERENCE_VARIANT,
    Variant,
    default_variant_name,
    find_variant,
    list_variants,
)

Model = Callable[[torch.Tensor], torch.Tensor]
Batches = list[tuple[torch.Tensor, torch.Tensor]]


class BenchConfig(BaseModel):
    """Options of ``vitkit bench`` (the CLI's defaults)."""

    model_config = ConfigDict(extra="forbid")

    variants: list[str] | None = None  # None: all
    batches: list[int] = Field(default_factory=lambda: [1, 8, 32])
    data: str | None = None  # labelled images; default: the bundle's validation split
    threads: int | None = None  # None: torch's default
    tome: list[int] = Field(default_factory=list)  # token-merge rates for extra ViT variants
    max_images: int = 1000  # validation images per variant (class-balanced subset)
    device: str = "cpu"

    @field_validator("batches")
    @classmethod
    def _positive_batches(cls, value: list[int]) -> list[int]:
        if not value or any(b < 1 for b in value):
            raise ValueError(f"batch sizes must be positive integers, got {value}")
        return sorted(set(value))

    @field_validator("threads")
    @classmethod
    def _positive_threads(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"threads must be >= 1, got {value}")
        return value


@dataclass
class VariantResult:
    """What was measured for one variant (``None``: unknown or not measured)."""

    name: str
    runtime: str
    precision: str
    status: str = "ok"  # ok | skipped | failed
    reason: str | None = None
    install: str | None = None  # pip requirement that makes a skipped runtime available
    size_mb: float | None = None
    size_files: list[str] = field(default_factory=list)
    parameters: int | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None  # points (percent) below torch-fp32
    agreement: float | None = None  # top-1 agreement with torch-fp32
    n_images: int | None = None
    latency: Latency | None = None
    throughput: dict[int, float] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    load_s: float | None = None
    tome_r: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` entry: the contract keys first, then the extras."""
        return {
            "name": self.name, "runtime": self.runtime, "precision": self.precision,
            "size_mb": self.size_mb, "accuracy": self.accuracy,
            "accuracy_drop": self.accuracy_drop, "agreement": self.agreement,
            "latency_ms": self.latency.to_dict() if self.latency else None,
            "throughput": {str(b): v for b, v in self.throughput.items()},
            "status": self.status, "reason": self.reason, "install": self.install,
            "parameters": self.parameters, "peak_rss_mb": self.peak_rss_mb,
            "load_s": self.load_s, "latency_runs": self.latency.runs if self.latency else None,
            "n_images": self.n_images, "size_files": self.size_files, "tome_r": self.tome_r,
        }


@dataclass
class BenchResult:
    """Every variant's measurements plus the conditions they were taken under."""

    bundle: str
    threads: int
    batches: list[int]
    reference: str | None  # the labelled images accuracy was measured on
    variants: list[VariantResult]
    reference_note: str | None = None  # why there are none, when that is worth saying
    default_variant: str = REFERENCE_VARIANT  # what the bundle runs when no variant is named
    accuracy_key: str = "accuracy"  # what "accuracy" is: top-1, or the task's Dice / mAP@0.5

    def to_dict(self) -> dict[str, Any]:
        return {
            "default_variant": self.default_variant,
            "accuracy_key": self.accuracy_key,
            "threads": self.threads,
            "variants": [v.to_dict() for v in self.variants],
            "bundle": self.bundle, "batches": self.batches, "reference": self.reference,
            "reference_note": self.reference_note,
            "torch_version": torch.__version__,
            "peak_memory": "peak_rss_mb: growth of the process's peak resident memory while "
                           "loading and timing the variant (Linux VmHWM)",
        }

    def by_latency(self) -> list[VariantResult]:
        """Measured variants fastest first (batch-1 p50), then the skipped ones."""
        return sorted(self.variants, key=lambda v: (v.latency is None,
                                                    v.latency.p50 if v.latency else 0.0))


@dataclass
class Candidate:
    """A variant ready to be measured: how to load it and which files it is made of."""

    name: str
    runtime: str
    precision: str
    load: Callable[[], Model]
    files: list[Path]
    tome_r: int | None = None


def run_bench(bundle: BundleSource, config: BenchConfig | None = None, budget: Budget | None = None,
              on_variant: Callable[[str], None] | None = None) -> BenchResult:
    """Measures the chosen variants of a classifier bundle (see the module docstring).

    Args:
        bundle: A classifier bundle folder.
        config: What to measure; defaults measure every variant at batch 1, 8 and 32.
        budget: How long to time each measurement.
        on_variant: Called with each variant's name before it is measured (progress).

    Raises:
        VitkitError: Not a classifier bundle, an unknown variant name, ``--tome`` on a CNN, or
            ``config.data`` has no usable images.
    """
    config, budget = config or BenchConfig(), budget or Budget()
    opened = Bundle.open(bundle)  # read once: every variant below loads from this reading
    meta = opened.meta
    if meta.task == "anomaly":
        raise BundleError(f"{bundle} is an anomaly bundle; `vitkit anomaly eval` measures its "
                          "speed and ranking (bench measures classifiers, segmenters and "
                          "detectors).")
    if meta.task != "classify" and config.tome:
        raise VitkitError("--tome merges a ViT classifier's tokens; this bundle is a "
                          f"'{meta.task}' model.")
    variants = select_variants(meta, config.variants, opened.path)
    saved_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        if meta.task != "classify":
            return _bench_task(opened, variants, config, budget, on_variant)
        return _bench(opened, meta, variants, config, budget, on_variant)
    finally:
        torch.set_num_threads(saved_threads)


def select_variants(meta: BundleMeta, names: Sequence[str] | None, bundle: Path | str
                    ) -> list[Variant]:
    """``None`` or ``["all"]``: every variant; else the named ones (unknown names: an error)."""
    if not names or list(names) == ["all"]:
        return list_variants(meta)
    return [find_variant(meta, name, bundle) for name in names]


def _bench(bundle: Bundle, meta: BundleMeta, variants: list[Variant], config: BenchConfig,
           budget: Budget, on_variant: Callable[[str], None] | None) -> BenchResult:
    threads = config.threads or torch.get_num_threads()
    reference = load(bundle, device=config.device, threads=config.threads,
                     variant=REFERENCE_VARIANT)
    assert reference.model is not None  # torch-fp32 always carries its model
    parameters = sum(p.numel() for p in reference.model.parameters())
    eval_batches, source, note = _eval_batches(meta, config)
    expected = _Replay(reference, eval_batches)
    inputs = _random_inputs(reference.preprocessing.input_size, config.batches)
    candidates = [_candidate(bundle, v, config) for v in variants]
    candidates += [_tome_candidate(bundle.path, reference.model, r, config)
                   for r in config.tome]
    results = []
    for candidate in candidates:
        if on_variant is not None:
            on_variant(candidate.name)
        result = measure_variant(candidate, inputs, budget, eval_batches, expected)
        result.parameters = parameters if result.status == "ok" else None
        results.append(result)
    return BenchResult(str(bundle), threads, list(config.batches), source, results, note,
                       default_variant_name(meta))


def _bench_task(bundle: Bundle, variants: list[Variant], config: BenchConfig, budget: Budget,
                on_variant: Callable[[str], None] | None) -> BenchResult:
    """Bench of a segmentation or detection bundle: the same timing as a classifier's; the
    accuracy is the task's own figure (``accuracy_key``: Dice, mAP@0.5) measured by its
    evaluation on each variant, and the drop is counted against torch-fp32."""
    from vitkit.tasks.base import get_measured_task

    task = get_measured_task(bundle.meta.task)
    threads = config.threads or torch.get_num_threads()
    inputs = _random_inputs(task.input_size(bundle), config.batches)
    data = config.data or task.validation_data(bundle)
    note = None if data else ("accuracy unknown: the bundle's training data is not here; "
                              "pass --data with labelled images")
    results: list[VariantResult] = []
    for variant in variants:
        if on_variant is not None:
            on_variant(variant.name)

        def opened(name: str = variant.name) -> Model:
            return task.runtime(bundle, name, config.device, config.threads)

        candidate = Candidate(variant.name, variant.runtime, variant.precision, opened,
                              variant_files(bundle.path, variant))
        result = measure_variant(candidate, inputs, budget)
        if data and result.status == "ok":
            record = task.evaluate(bundle, str(data), variant=variant.name,
                                   device=config.device, progress=False)
            figure = record.get(task.accuracy_key)  # None: nothing to measure it on
            result.accuracy = round(float(figure), 4) if figure is not None else None
            result.n_images = record.get("n_images")
        results.append(result)
    reference = next((r.accuracy for r in results if r.name == REFERENCE_VARIANT), None)
    if reference is not None:
        for result in results:
            if result.accuracy is not None:
                result.accuracy_drop = round(100 * (reference - result.accuracy), 2)
    return BenchResult(str(bundle), threads, list(config.batches),
                       str(data) if data else None, results, note,
                       default_variant_name(bundle.meta), accuracy_key=task.accuracy_key)


def measure_variant(candidate: Candidate, inputs: dict[int, torch.Tensor], budget: Budget,
                    eval_batches: Batches | None = None, reference: Model | None = None
                    ) -> VariantResult:
    """Loads and times one variant; accuracy and agreement when ``eval_batches`` are given
    (``reference`` is the fp32 model they are compared with).

    A runtime that is not installed or a missing file gives a ``skipped`` result with the
    reason; any other failure while loading or running it gives ``failed``.
    """
    result = VariantResult(candidate.name, candidate.runtime, candidate.precision,
                           tome_r=candidate.tome_r)
    try:
        _check_runnable(candidate)
    except VitkitError as exc:
        return _skip(result, exc)
    result.size_files = [p.name for p in candidate.files]
    result.size_mb = round(sum(p.stat().st_size for p in candidate.files) / 1e6, 3)
    try:
        with PeakRss() as memory:
            start = time.perf_counter()
            model = candidate.load()
            result.load_s = round(time.perf_counter() - start, 3)
            result.latency = measure_latency(model, inputs[1], budget)
            result.throughput = {b: measure_throughput(model, x, budget)
                                 for b, x in inputs.items()}
        result.peak_rss_mb = memory.mb
        if eval_batches and reference is not None:
            _add_accuracy(result, model, reference, eval_batches)
    except VitkitError as exc:
        return _skip(result, exc)
    except Exception as exc:  # noqa: BLE001 - one broken variant must not hide the others
        result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
        result.latency, result.throughput = None, {}
    return result


def _check_runnable(candidate: Candidate) -> None:
    module = runtimes.RUNTIME_MODULES.get(candidate.runtime)
    if module is not None:
        runtimes.require(module)
    missing = [p for p in candidate.files if not p.exists()]
    if missing:
        raise BundleError(f"file {missing[0].name} is missing; export the variant again "
                          "(`vitkit export`).")


def _skip(result: VariantResult, exc: VitkitError) -> VariantResult:
    result.status, result.reason = "skipped", str(exc)
    if isinstance(exc, runtimes.RuntimeMissing):
        module = runtimes.RUNTIME_MODULES.get(result.runtime, result.runtime)
        result.install = f"vitkit[{runtimes.EXTRAS.get(module, (module, module))[1]}]"
    return result


def _add_accuracy(result: VariantResult, model: Model, reference: Model,
                  batches: Batches) -> None:
    from vitkit.compress.reference import compare

    comparison = compare(reference, model, batches)
    result.accuracy = round(comparison.accuracy, 4) if comparison.accuracy is not None else None
    result.accuracy_drop = comparison.accuracy_drop
    result.agreement = round(comparison.top1_agreement, 4)
    result.n_images = comparison.n_images


class _Replay:
    """The fp32 reference's logits per validation batch, computed once for all variants."""

    def __init__(self, model: Model, batches: Batches | None) -> None:
        self._model = model
        self._logits = {id(images): model(images) for images, _ in batches or []}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        cached = self._logits.get(id(images))
        return cached if cached is not None else self._model(images)


def _eval_batches(meta: BundleMeta, config: BenchConfig
                  ) -> tuple[Batches | None, str | None, str | None]:
    """Validation batches, where they came from, and a note when there are none."""
    from vitkit.compress.reference import image_batches, reference_images

    try:
        found = reference_images(meta, config.data, limit=config.max_images)
    except DataError as exc:
        if config.data:
            raise
        return None, None, f"accuracy unknown: {exc}"
    if found is None:
        return None, None, ("accuracy unknown: the bundle's training data is not here; pass "
                            "--data with labelled validation images")
    return list(image_batches(found.samples, meta, batch_size=32)), found.source, None


def _random_inputs(size: tuple[int, int], batches: Sequence[int]) -> dict[int, torch.Tensor]:
    """Seeded preprocessed-looking input per batch size (batch 1 always, for latency)."""
    generator = torch.Generator().manual_seed(0)
    return {b: torch.randn(b, 3, *size, generator=generator) for b in sorted({1, *batches})}


def _candidate(bundle: Bundle, variant: Variant, config: BenchConfig) -> Candidate:
    def load_variant() -> Model:
        return load(bundle, device=config.device, variant=variant.name, threads=config.threads)

    return Candidate(variant.name, variant.runtime, variant.precision, load_variant,
                     variant_files(bundle.path, variant))


def _tome_candidate(bundle: Path, model: torch.nn.Module, r: int, config: BenchConfig
                    ) -> Candidate:
    """torch fp32 with ``r`` tokens merged per block, made from the loaded model."""
    from vitkit.compress.tome import apply_tome, find_vit
    from vitkit.predictor.runtimes import TorchRuntime

    find_vit(model)  # a clear error for CNNs before anything is measured

    def merged() -> Model:
        return TorchRuntime(apply_tome(model, r), "fp32", config.device,
                            name=f"torch-fp32-tome{r}")

    return Candidate(f"torch-fp32-tome{r}", "torch", "fp32", merged, [bundle / WEIGHTS_FILE],
                     tome_r=r)


def variant_files(bundle: Path, variant: Variant) -> list[Path]:
    """The files a variant loads: the weights for built-in torch variants, else the variant's
    file plus its companions (OpenVINO ``.bin``, ONNX external ``.data``)."""
    if variant.file is None:
        return [bundle / WEIGHTS_FILE]
    main = bundle / variant.file
    companions = [main.with_suffix(".bin")] if main.suffix == ".xml" else []
    companions.append(main.with_name(main.name + ".data"))
    return [main] + [p for p in companions if p.exists() or p.suffix == ".bin"]
