"""`vitkit optimize`: build the candidate variants, measure them here, keep the fastest that
holds the accuracy guard as the bundle's default variant.

Speed depends on the machine (AMX bf16 or not, VNNI int8, core count), so nothing is assumed:
each candidate is built (quantized or exported, measured against torch-fp32 on the validation
images) and then timed in one process, one after another, by the same benchmark as
``vitkit bench``. A candidate is eligible when it loses at most ``max_drop`` accuracy points
and agrees with torch-fp32 on at least ``min_agreement`` of the images; the eligible one with
the highest throughput at ``batch`` (goal ``throughput``) or the lowest batch-1 median latency
(goal ``latency``) becomes ``default_variant`` in ``vitkit.json``, with every candidate's
figures under ``optimization``. ``predict``, ``eval``, ``bench`` and ``serve`` run the default
unless ``--variant`` names another; ``vitkit.load(bundle)`` does the same.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from vitkit.benchmark import BenchConfig, Budget, run_bench
from vitkit.benchmark.run import VariantResult
from vitkit.bundle import Bundle, BundleSource, update_meta
from vitkit.compress.quantize import QuantizationRefused, is_transformer, quantize_bundle
from vitkit.compress.tome import tome_supported
from vitkit.errors import BundleError, VitkitError
from vitkit.predictor.runtimes import RUNTIME_MODULES, available
from vitkit.predictor.variants import REFERENCE_VARIANT, find_variant, list_variants

Goal = Literal["throughput", "latency"]


@dataclass(frozen=True)
class Recipe:
    """How to build one candidate: a `vitkit quantize` or `vitkit export` call, or nothing for
    the torch variants made on load."""

    name: str
    runtime: str
    kind: Literal["builtin", "quantize", "export"]
    method: str | None = None
    tome: int = 0
    image_size: int | None = None


def _recipes(tome_rates: Sequence[int], image_sizes: Sequence[int] = ()) -> list[Recipe]:
    recipes = [
        Recipe("torch-bf16", "torch", "builtin"),
        Recipe("torch-dynamic-int8", "torch", "builtin"),
        Recipe("openvino-bf16", "openvino", "quantize", "bf16"),
        Recipe("openvino-int8", "openvino", "quantize", "static"),
        Recipe("onnx-fp32", "onnxruntime", "export"),
        Recipe("onnx-int8", "onnxruntime", "quantize", "static"),
    ]
    recipes += [Recipe(f"openvino-int8-tome{r}", "openvino", "quantize", "static", tome=r)
                for r in tome_rates if r > 0]
    recipes += [Recipe(f"openvino-int8-{size}px", "openvino", "quantize", "static",
                       image_size=size) for size in image_sizes]
    return recipes


# Token-merging rates tried on ViTs by default: r tokens merged per block (ViT-S/14 at 224 px
# has 256 patch tokens and 12 blocks; r = 8 removes 96 of them by the last block).
DEFAULT_TOME_RATES = (4, 8)


@dataclass
class CandidateReport:
    """One candidate's figures and verdict, as recorded in the bundle."""

    name: str
    status: str  # ok | refused | skipped | failed
    reason: str | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    agreement: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    throughput: float | None = None  # images/s at the optimization batch
    size_mb: float | None = None
    eligible: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OptimizeResult:
    """What `vitkit optimize --json` prints."""

    bundle: str
    default_variant: str
    previous_default: str
    goal: str
    batch: int
    max_drop: float
    min_agreement: float
    reference: str | None
    candidates: list[CandidateReport]
    machine: dict[str, Any]
    speedup: float | None = None  # chosen vs torch-fp32 on the goal's measure
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "default_variant": self.default_variant,
                "previous_default": self.previous_default, "goal": self.goal,
                "batch": self.batch, "max_drop": self.max_drop,
                "min_agreement": self.min_agreement, "reference": self.reference,
                "speedup": self.speedup, "machine": self.machine,
                "candidates": [c.to_dict() for c in self.candidates], "notes": self.notes}


def machine_description() -> dict[str, Any]:
    """The machine the figures were measured on (speed holds only there)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "platform": platform.platform()}


def run_optimize(bundle: BundleSource, data: str | None = None, max_drop: float = 0.5,
                 min_agreement: float = 0.99, goal: Goal = "throughput", batch: int = 32,
                 candidates: Sequence[str] | None = None, tome: Sequence[int] | None = None,
                 image_sizes: Sequence[int] = (), rebuild: bool = False,
                 budget: Budget | None = None, max_images: int = 1000,
                 log: Callable[[str], None] | None = None) -> OptimizeResult:
    """Builds, measures and chooses (see the module docstring).

    Args:
        candidates: Variant names to consider (default: every recipe whose runtime is
            installed); torch-fp32 is always measured as the reference and is the fallback.
        tome: Token-merging rates for ViTs (default :data:`DEFAULT_TOME_RATES`; CNNs: none).
        image_sizes: Smaller input sizes to try as OpenVINO int8 candidates (the resize runs
            inside the graph; see :mod:`vitkit.compress.resolution`). None by default: on the
            fine-tuned offline ViT even 210 px lost 2 points (README, "Optimize").
        rebuild: Build candidates again even when the bundle already has them.

    Raises:
        VitkitError: not a classifier bundle, an unknown candidate name, or no labelled
            images to hold the accuracy guard on.
    """
    opened = Bundle.open(bundle)
    bundle, meta = opened.path, opened.meta
    say = log or (lambda _message: None)
    if meta.task == "anomaly":
        raise BundleError(f"{bundle} is an anomaly bundle; optimize measures classifiers, "
                          "segmenters and detectors (`vitkit anomaly export` makes an anomaly "
                          "bundle's fast variant).")
    previous = find_variant(meta, None, bundle).name
    if meta.task == "classify":
        recipes = _select(opened, candidates, tome, image_sizes)
    else:
        if tome or image_sizes:
            raise VitkitError("--tome and --image-size apply to classifiers; this bundle is a "
                              f"'{meta.task}' model.")
        recipes = _pick(TASK_RECIPES[meta.task], candidates)
        min_agreement = 0.0  # the task's own figure is the guard (Dice, mAP@0.5)
    reports: dict[str, CandidateReport] = {}
    built: list[str] = [REFERENCE_VARIANT]
    benched: BundleSource = opened
    existing = {v.name for v in list_variants(meta)}
    for recipe in recipes:
        missing = RUNTIME_MODULES.get(recipe.runtime)
        if missing and not available(missing):
            reports[recipe.name] = CandidateReport(
                recipe.name, "skipped", f"{missing} is not installed (pip install "
                f"'vitkit[{'onnx' if recipe.runtime == 'onnxruntime' else recipe.runtime}]')")
            continue
        if recipe.kind == "builtin" or (recipe.name in existing and not rebuild):
            built.append(recipe.name)
            continue
        say(f"building {recipe.name} …")
        benched = bundle  # a build records its variant: the bench reads the bundle anew
        try:
            _build(bundle, recipe, data, max_drop)
        except QuantizationRefused as refused:
            details = refused.details
            reports[recipe.name] = CandidateReport(
                recipe.name, "refused", str(refused), accuracy=details.get("accuracy"),
                accuracy_drop=details.get("accuracy_drop"), agreement=details.get("agreement"))
            continue
        except VitkitError as failed:
            reports[recipe.name] = CandidateReport(recipe.name, "failed", str(failed))
            continue
        built.append(recipe.name)
    say(f"measuring {len(built)} variants (accuracy on the validation images, then speed) …")
    bench = run_bench(benched, BenchConfig(variants=built, batches=sorted({1, batch}),
                                           data=data, max_images=max_images),
                      budget or Budget(), on_variant=lambda name: say(f"  timing {name}"))
    for measured in bench.variants:
        reports[measured.name] = _report(measured, batch)
    if bench.reference is None:
        raise VitkitError(
            f"{bundle}: no labelled images to hold the accuracy guard on "
            f"({bench.reference_note or 'the bundle lists no validation split'}); give "
            "--data with labelled images like those the model will see.")
    ordered = [reports[name] for name in [REFERENCE_VARIANT, *[r.name for r in recipes]]
               if name in reports]
    for report in ordered:
        report.eligible = _eligible(report, max_drop, min_agreement)
    chosen = _choose(ordered, goal)
    result = OptimizeResult(
        str(bundle), chosen.name, previous, goal, batch, max_drop, min_agreement,
        bench.reference, ordered, machine_description(), _speedup(chosen, ordered, goal))
    if chosen.name == REFERENCE_VARIANT:
        result.notes.append(f"no candidate was both at least {MIN_GAIN:.2f}x faster than "
                            "torch-fp32 and within the accuracy guard; torch-fp32 stays the "
                            "default")
    _record(bundle, result)
    return result


def set_default_variant(bundle: BundleSource, name: str) -> dict[str, Any]:
    """Makes ``name`` the default by hand (``vitkit optimize --default NAME``), recorded as
    such; the variant must exist."""
    opened = Bundle.open(bundle)
    previous = find_variant(opened.meta, None, opened.path).name
    variant = find_variant(opened.meta, name, opened.path)
    record = {"chosen_by": "hand", "default_variant": variant.name,
              "measured_at": _now(), "previous_default": previous}
    update_meta(opened.path, default_variant=variant.name, optimization=record)
    return record


def _select(bundle: Bundle, names: Sequence[str] | None, tome: Sequence[int] | None,
            image_sizes: Sequence[int] = ()) -> list[Recipe]:
    from vitkit.backbones import BackboneSpec, rebuild

    meta = bundle.meta
    model = rebuild(BackboneSpec.from_dict(meta.backbone), num_classes=len(meta.labels))
    vit = tome_supported(model) and is_transformer(model)
    rates = list(tome) if tome is not None else list(DEFAULT_TOME_RATES if vit else ())
    if rates and any(r > 0 for r in rates) and not vit:
        raise VitkitError("--tome merges tokens of a ViT; this bundle's model is not one.")
    if image_sizes:
        from vitkit.compress.resolution import check_resolution

        for size in image_sizes:
            check_resolution(model, size, int(meta.preprocessing["input_size"][-1]))
    return _pick(_recipes(rates, image_sizes), names)


# The candidates of the tasks measured through the task interface: their exports (int8 of a
# segmenter or detector needs a calibration recipe of its own; not offered yet).
TASK_RECIPES: dict[str, list[Recipe]] = {
    "segment": [Recipe("torch-bf16", "torch", "builtin"),
                Recipe("onnx-fp32", "onnxruntime", "export"),
                Recipe("openvino-fp32", "openvino", "export")],
    "detect": [Recipe("torch-bf16", "torch", "builtin"),
               Recipe("onnx-fp32", "onnxruntime", "export"),
               Recipe("openvino-fp32", "openvino", "export")],
}


def _pick(recipes: list[Recipe], names: Sequence[str] | None) -> list[Recipe]:
    if names is None:
        return recipes
    by_name = {r.name: r for r in recipes}
    unknown = [n for n in names if n not in by_name and n != REFERENCE_VARIANT]
    if unknown:
        raise VitkitError(f"unknown candidate(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(by_name)}.")
    return [by_name[n] for n in names if n in by_name]


def _build(bundle: Path, recipe: Recipe, data: str | None, max_drop: float) -> None:
    task = Bundle.open(bundle).meta.task
    if task == "segment":
        from vitkit.workflows.segment_export import run_segment_export

        run_segment_export(bundle, [recipe.name], data=data, progress=False)
        return
    if task == "detect":
        from vitkit.workflows.detect_export import run_detect_export

        run_detect_export(bundle, recipe.name, data=data)
        return
    if recipe.kind == "quantize":
        quantize_bundle(bundle, method=recipe.method, runtime=recipe.runtime, data=data,
                        max_drop=max_drop, tome=recipe.tome, image_size=recipe.image_size)
    elif recipe.kind == "export":
        from vitkit.workflows.export import run_export

        run_export(bundle, ["onnx"], data=data, progress=False)


def _report(measured: VariantResult, batch: int) -> CandidateReport:
    return CandidateReport(
        measured.name, measured.status, measured.reason, measured.accuracy,
        measured.accuracy_drop, measured.agreement,
        measured.latency.p50 if measured.latency else None,
        measured.latency.p95 if measured.latency else None,
        measured.throughput.get(batch), measured.size_mb)


def _eligible(report: CandidateReport, max_drop: float, min_agreement: float) -> bool:
    if report.status != "ok":
        return False
    if report.name == REFERENCE_VARIANT:
        return True
    if report.accuracy_drop is None or (report.agreement is None and min_agreement > 0):
        report.reason = "accuracy not measured"
        return False
    if report.accuracy_drop > max_drop:
        report.reason = f"loses {report.accuracy_drop:.2f} points (> {max_drop})"
        return False
    if report.agreement is not None and report.agreement < min_agreement:
        report.reason = (f"agrees with torch-fp32 on {report.agreement:.1%} of the images "
                         f"(< {min_agreement:.0%})")
        return False
    return True


def _measure(report: CandidateReport, goal: Goal) -> float | None:
    """Larger is better."""
    if goal == "throughput":
        return report.throughput
    return -report.latency_p50_ms if report.latency_p50_ms is not None else None


# A candidate must beat torch-fp32 by this factor to replace it: timings on a shared machine
# vary by a few percent, and the reference is the variant with nothing to go wrong.
MIN_GAIN = 1.05


def _choose(reports: list[CandidateReport], goal: Goal) -> CandidateReport:
    scored = [(value, r) for r in reports if r.eligible
              and (value := _measure(r, goal)) is not None]
    reference = next((r for r in reports if r.name == REFERENCE_VARIANT), None)
    if reference is None or _measure(reference, goal) is None:
        raise VitkitError("torch-fp32 could not be measured on this machine; nothing to "
                          "compare against (see `vitkit bench`).")
    best_value, best = max(scored, key=lambda pair: pair[0])
    base = _measure(reference, goal)
    assert base is not None
    gain = best_value / base if goal == "throughput" else base / best_value
    return best if gain >= MIN_GAIN else reference


def _speedup(chosen: CandidateReport, reports: list[CandidateReport], goal: Goal
             ) -> float | None:
    reference = next((r for r in reports if r.name == REFERENCE_VARIANT), None)
    if reference is None:
        return None
    if goal == "throughput" and chosen.throughput and reference.throughput:
        return round(chosen.throughput / reference.throughput, 2)
    if goal == "latency" and chosen.latency_p50_ms and reference.latency_p50_ms:
        return round(reference.latency_p50_ms / chosen.latency_p50_ms, 2)
    return None


def _record(bundle: Path, result: OptimizeResult) -> None:
    record = {"chosen_by": "measurement", "measured_at": _now(), **result.to_dict()}
    record.pop("bundle")
    update_meta(bundle, default_variant=result.default_variant, optimization=record)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
