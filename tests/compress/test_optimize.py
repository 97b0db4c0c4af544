"""`vitkit optimize`: candidates built and measured here, the fastest eligible one recorded as
the bundle's default variant, and every consumer running it unless told otherwise."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.e2e.cli import run_cli

import vitkit
from vitkit.benchmark import QUICK, BenchConfig, run_bench
from vitkit.bundle import Bundle, read_meta
from vitkit.compress.reference import reference_images
from vitkit.errors import VitkitError
from vitkit.predictor import predict as predict_module
from vitkit.predictor.variants import default_variant_name
from vitkit.workflows import optimize as opt
from vitkit.workflows.optimize import CandidateReport, run_optimize, set_default_variant


def _report(name: str, throughput: float, p50: float, drop: float = 0.0,
            agreement: float = 1.0, status: str = "ok") -> CandidateReport:
    return CandidateReport(name, status, accuracy=0.9 - drop / 100, accuracy_drop=drop,
                           agreement=agreement, latency_p50_ms=p50, throughput=throughput)


def _choose(reports: list[CandidateReport], goal: opt.Goal = "throughput",
            max_drop: float = 0.5, min_agreement: float = 0.99) -> str:
    for report in reports:
        report.eligible = opt._eligible(report, max_drop, min_agreement)
    return opt._choose(reports, goal).name


def test_the_fastest_candidate_within_the_guard_wins() -> None:
    reports = [_report("torch-fp32", 20, 50), _report("openvino-int8", 120, 12, drop=0.3),
               _report("openvino-int8-tome8", 200, 8, drop=1.2),  # too much accuracy lost
               _report("onnx-int8", 150, 10, agreement=0.97),  # disagrees too often
               _report("openvino-bf16", 300, 5, status="failed")]
    assert _choose(reports) == "openvino-int8"
    assert "1.20 points" in (reports[2].reason or "")
    assert "97.0%" in (reports[3].reason or "")


def test_the_latency_goal_ranks_by_batch_one_median() -> None:
    reports = [_report("torch-fp32", 20, 50), _report("torch-bf16", 150, 30),
               _report("openvino-int8", 120, 6)]
    assert _choose(reports, goal="latency") == "openvino-int8"
    assert _choose(reports, goal="throughput") == "torch-bf16"


def test_a_gain_within_timing_noise_keeps_the_reference() -> None:
    reports = [_report("torch-fp32", 100, 10), _report("torch-bf16", 103, 9.9)]
    assert _choose(reports) == "torch-fp32"


class _AnswersTheFirstClass:
    """A deliberately broken variant: class 0 for every image, at once (so it is also by far
    the fastest candidate, and only the accuracy guard can keep it out)."""

    runtime, precision = "torch", "int8"

    def __init__(self, name: str, classes: int) -> None:
        self.name, self.classes = name, classes

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(batch), self.classes)
        logits[:, 0] = 1.0
        return logits


def test_the_guard_refuses_a_variant_that_loses_accuracy_and_keeps_one_that_does_not(
        fresh_bundle: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = fresh_bundle("cnn")
    meta = read_meta(bundle)
    real_open = predict_module.open_runtime

    def open_runtime(path: Path, variant: Any, model: Any, **options: Any) -> Any:
        if variant.name == "torch-dynamic-int8":
            return _AnswersTheFirstClass(variant.name, len(meta.labels))
        return real_open(path, variant, model, **options)

    monkeypatch.setattr(predict_module, "open_runtime", open_runtime)
    candidates = ["torch-bf16", "torch-dynamic-int8"]
    guarded = run_optimize(bundle, candidates=candidates, budget=QUICK)  # the default guard
    assert (guarded.max_drop, guarded.min_agreement) == (0.5, 0.99)
    by_name = {c.name: c for c in guarded.candidates}
    broken, bf16 = by_name["torch-dynamic-int8"], by_name["torch-bf16"]
    reference = reference_images(meta)
    assert reference is not None
    labels = [s.label for s in reference.samples]
    # Its accuracy is the share of validation images of the first class, counted by hand.
    assert broken.status == "ok" and broken.accuracy == round(
        labels.count(meta.labels[0]) / len(labels), 4)
    assert broken.accuracy_drop is not None and broken.accuracy_drop > 0.5
    assert not broken.eligible and broken.reason == (
        f"loses {broken.accuracy_drop:.2f} points (> 0.5)")
    assert broken.throughput == max(c.throughput or 0 for c in guarded.candidates)
    # bf16 answers like fp32 on every validation image (measured: 6 of 6, 0 points lost).
    assert bf16.eligible and bf16.accuracy_drop == 0.0 and bf16.agreement == 1.0
    assert guarded.default_variant in {"torch-fp32", "torch-bf16"}
    # The guard alone kept it out: without it, the broken variant wins on speed.
    unguarded = run_optimize(bundle, candidates=candidates, max_drop=100, min_agreement=0.0,
                             budget=QUICK)
    assert unguarded.default_variant == "torch-dynamic-int8"


def test_optimize_records_its_choice_and_every_consumer_runs_it(
        fresh_bundle: Callable[[str], Path]) -> None:
    bundle = fresh_bundle("cnn")
    result = run_optimize(bundle, candidates=["torch-bf16", "torch-dynamic-int8"],
                          budget=QUICK)  # the default guard: 0.5 points, 99% agreement
    names = [c.name for c in result.candidates]
    assert names == ["torch-fp32", "torch-bf16", "torch-dynamic-int8"]
    for candidate in result.candidates:
        assert candidate.status == "ok" and candidate.throughput and candidate.latency_p50_ms
        # bf16 and dynamic int8 keep every top-1 of the tiny cnn (its top-2 margins are 67x
        # their largest logit change, tests/compress/test_runtimes.py), so the guard passes.
        assert candidate.accuracy_drop == 0.0 and candidate.agreement == 1.0
        assert candidate.eligible, candidate.reason
    meta = read_meta(bundle)
    extra = meta.model_extra or {}
    assert extra["default_variant"] == result.default_variant == default_variant_name(meta)
    record = extra["optimization"]
    assert record["chosen_by"] == "measurement" and record["machine"]["threads"] >= 1
    assert [c["name"] for c in record["candidates"]] == names
    chosen = next(c for c in result.candidates if c.name == result.default_variant)
    best = max(c.throughput or 0 for c in result.candidates if c.eligible)
    if chosen.name != "torch-fp32":
        assert chosen.throughput == best
    assert vitkit.load(bundle).variant.name == result.default_variant
    assert vitkit.load(bundle, variant="torch-fp32").variant.name == "torch-fp32"
    bench = run_bench(bundle, BenchConfig(variants=["torch-fp32"], batches=[1]), QUICK)
    assert bench.to_dict()["default_variant"] == result.default_variant


def test_a_default_set_by_hand_is_used_and_recorded_as_such(
        fresh_bundle: Callable[[str], Path]) -> None:
    bundle = fresh_bundle("cnn")
    record = set_default_variant(bundle, "torch-bf16")
    assert record == {**record, "chosen_by": "hand", "previous_default": "torch-fp32"}
    predictor = vitkit.load(bundle)
    assert predictor.variant.name == "torch-bf16"
    from vitkit.serve.served import ServedModel

    assert ServedModel.load("m", bundle).variant == "torch-bf16", "the service runs it too"
    assert ServedModel.load("m", bundle, "torch-fp32").variant == "torch-fp32"
    with pytest.raises(VitkitError, match="no variant 'openvino-int9'"):
        set_default_variant(bundle, "openvino-int9")
    from vitkit.predictor.variants import Variant, record_variant, remove_variant

    record_variant(bundle, Variant(name="onnx-fp32", runtime="onnxruntime", precision="fp32",
                                   file="variants/model.onnx"))
    set_default_variant(bundle, "onnx-fp32")
    remove_variant(bundle, "onnx-fp32")  # the default is gone: the reference runs again
    assert default_variant_name(read_meta(bundle)) == "torch-fp32"
    assert vitkit.load(bundle).variant.name == "torch-fp32"


def test_a_default_whose_runtime_is_missing_falls_back_with_a_warning(
        fresh_bundle: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = fresh_bundle("cnn")
    pytest.importorskip("onnxruntime")
    from vitkit.workflows.export import run_export

    run_export(bundle, ["onnx"], progress=False)
    set_default_variant(bundle, "onnx-fp32")
    assert vitkit.load(bundle).variant.name == "onnx-fp32"
    monkeypatch.setattr(predict_module, "available", lambda module: False)
    with pytest.warns(RuntimeWarning, match="onnx-fp32 needs onnxruntime"):
        predictor = vitkit.load(bundle)
    assert predictor.variant.name == "torch-fp32"
    with warnings.catch_warnings():  # a variant asked for by name never falls back quietly
        warnings.simplefilter("error")
        assert vitkit.load(bundle, variant="torch-fp32").variant.name == "torch-fp32"


def test_unknown_candidates_and_merging_on_a_cnn_are_refused(
        fresh_bundle: Callable[[str], Path]) -> None:
    bundle = fresh_bundle("cnn")
    with pytest.raises(VitkitError, match="unknown candidate.*openvino-int9"):
        run_optimize(bundle, candidates=["openvino-int9"], budget=QUICK)
    with pytest.raises(VitkitError, match="merges tokens of a ViT"):
        run_optimize(bundle, tome=[4], budget=QUICK)
    with pytest.raises(VitkitError, match="smaller than the bundle's input size"):
        run_optimize(bundle, image_sizes=[512], budget=QUICK)


def test_smaller_input_sizes_become_int8_candidates(fresh_bundle: Callable[[str], Path]
                                                    ) -> None:
    from vitkit.workflows.optimize import _select

    bundle = Bundle.open(fresh_bundle("vit"))
    names = [r.name for r in _select(bundle, None, None, [128, 96])]
    assert names[-2:] == ["openvino-int8-128px", "openvino-int8-96px"]
    assert [r.image_size for r in _select(bundle, ["openvino-int8-96px"], None, [96])] == [96]


@pytest.mark.slow
def test_cli_builds_measures_and_chooses_among_exported_variants(
        fresh_bundle: Callable[[str], Path], tiny_image_folder: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    bundle = fresh_bundle("vit")
    proc = run_cli("optimize", bundle, "--candidates", "openvino-int8,openvino-int8-tome4",
                   "--max-drop", "100", "--min-agreement", "0", "--quick", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert {"default_variant", "candidates", "machine", "goal", "speedup"} <= set(result)
    by_name = {c["name"]: c for c in result["candidates"]}
    assert set(by_name) == {"torch-fp32", "openvino-int8", "openvino-int8-tome4"}
    assert all(c["status"] == "ok" for c in by_name.values()), by_name
    assert (bundle / "variants").is_dir()
    meta = read_meta(bundle)
    assert (meta.model_extra or {})["default_variant"] == result["default_variant"]
    again = run_cli("optimize", bundle, "--candidates", "openvino-int8", "--quick", "--json",
                    "--max-drop", "100", "--min-agreement", "0")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "building" not in again.stderr  # the variant already in the bundle is reused
    chosen = json.loads(again.stdout)["default_variant"]
    predicted = run_cli("predict", bundle, tiny_image_folder, "--json")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert len(json.loads(predicted.stdout)) == 36
    if chosen != "torch-fp32":
        assert f"running {chosen}, the bundle's default" in predicted.stderr
