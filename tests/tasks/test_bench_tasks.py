"""bench and optimize on a segmentation and a detection bundle, through the task interface:
the accuracy column is the task's own figure (Dice, mAP@0.5) measured on each variant."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.segment.squares import make_squares

from vitkit.benchmark import BenchConfig, Budget, run_bench
from vitkit.bundle import Bundle, read_meta, save_bundle
from vitkit.errors import VitkitError
from vitkit.segment.model import build_segmenter, bundle_meta
from vitkit.tasks.base import get_measured_task
from vitkit.workflows.optimize import run_optimize

QUICK = Budget(warmup_runs=1, min_runs=2, min_seconds=0.0, max_runs=3, max_seconds=1.0,
               throughput_min_runs=1, throughput_min_seconds=0.0, throughput_max_seconds=1.0)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bench-segment")
    torch.manual_seed(0)
    model, record = build_segmenter("unet", "tu-efficientnet_lite0", 2, 64, weights="none")
    bundle = save_bundle(root / "bundle", model, bundle_meta(
        record, ["background", "defect"], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    return bundle, make_squares(root / "data", n=6)


def test_bench_measures_each_variant_of_a_segmenter_with_its_dice(
        segmenter: tuple[Path, Path]) -> None:
    bundle, data = segmenter
    result = run_bench(bundle, BenchConfig(variants=["torch-fp32", "torch-bf16"], batches=[2],
                                           data=str(data)), QUICK)
    document = result.to_dict()
    assert document["accuracy_key"] == "dice"
    by_name = {v["name"]: v for v in document["variants"]}
    expected = get_measured_task("segment").evaluate(
        Bundle.open(bundle), str(data), variant="torch-fp32", progress=False)["dice"]
    assert by_name["torch-fp32"]["accuracy"] == pytest.approx(expected, abs=1e-4)
    assert by_name["torch-fp32"]["accuracy_drop"] == 0.0
    assert by_name["torch-bf16"]["status"] == "ok"
    assert by_name["torch-bf16"]["latency_ms"]["p50"] > 0
    assert by_name["torch-fp32"]["throughput"]["2"] > 0
    with pytest.raises(VitkitError, match="--tome"):
        run_bench(bundle, BenchConfig(tome=[4]), QUICK)


@pytest.mark.slow
def test_optimize_builds_an_onnx_segmenter_and_guards_it_with_dice(
        segmenter: tuple[Path, Path]) -> None:
    pytest.importorskip("onnxruntime")
    bundle, data = segmenter
    result = run_optimize(bundle, data=str(data), candidates=["onnx-fp32"], batch=2,
                          budget=QUICK, max_drop=0.5)
    reports = {c.name: c for c in result.candidates}
    assert set(reports) == {"torch-fp32", "onnx-fp32"}
    onnx = reports["onnx-fp32"]
    assert onnx.status == "ok" and onnx.accuracy_drop is not None
    assert abs(onnx.accuracy_drop) <= 0.5 and onnx.eligible  # an fp32 export keeps its Dice
    meta = read_meta(bundle)
    assert meta.model_extra["optimization"]["default_variant"] == result.default_variant
    assert "onnx-fp32" in {v["name"] for v in meta.variants}
    with pytest.raises(VitkitError, match="unknown candidate"):
        run_optimize(bundle, data=str(data), candidates=["openvino-int8"], budget=QUICK)
