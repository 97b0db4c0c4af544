"""vitkit bench as a library: the JSON contract, unknown accuracy, skipped runtimes, outputs."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from vitkit.benchmark import QUICK, BenchConfig, run_bench
from vitkit.benchmark.output import bench_stacked, bench_table, write_csv
from vitkit.bundle import read_meta, update_meta
from vitkit.errors import VitkitError
from vitkit.predictor import runtimes
from vitkit.predictor.variants import Variant, record_variant
from vitkit.report.bench import write_bench_report

CONTRACT_KEYS = {"name", "runtime", "precision", "size_mb", "accuracy", "accuracy_drop",
                 "agreement", "latency_ms", "throughput"}


def quick(bundle: Path, **options: Any) -> dict[str, Any]:
    config = BenchConfig(batches=[1, 2], threads=1, max_images=12, **options)
    return run_bench(bundle, config, QUICK).to_dict()


def by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in result["variants"]}


def test_json_follows_the_contract_and_measures_accuracy(trained_bundles: dict[str, Path]
                                                         ) -> None:
    result = quick(trained_bundles["vit"], variants=["torch-fp32", "torch-dynamic-int8"],
                   tome=[8])
    assert result["threads"] == 1
    assert [v["name"] for v in result["variants"]] == [
        "torch-fp32", "torch-dynamic-int8", "torch-fp32-tome8"]
    for variant in result["variants"]:
        assert set(variant) >= CONTRACT_KEYS
        assert set(variant["latency_ms"]) == {"mean", "p50", "p95"}
        assert set(variant["throughput"]) == {"1", "2"}
        assert all(value > 0 for value in variant["throughput"].values())
        assert variant["size_mb"] > 0 and variant["parameters"] > 0
        assert 0.0 <= variant["accuracy"] <= 1.0 and 0.0 <= variant["agreement"] <= 1.0
    fp32 = by_name(result)["torch-fp32"]
    assert fp32["agreement"] == 1.0 and fp32["accuracy_drop"] == 0.0
    tome = by_name(result)["torch-fp32-tome8"]
    assert tome["tome_r"] == 8 and tome["agreement"] >= 0.5


def test_size_parameters_and_accuracy_are_the_ones_counted_by_hand(
        trained_bundles: dict[str, Path]) -> None:
    import vitkit
    from vitkit.bundle import WEIGHTS_FILE
    from vitkit.compress.reference import image_batches, reference_images

    bundle = trained_bundles["cnn"]
    result = quick(bundle, variants=["torch-fp32", "torch-bf16"])
    fp32, bf16 = by_name(result)["torch-fp32"], by_name(result)["torch-bf16"]
    weights = (bundle / WEIGHTS_FILE).stat().st_size
    assert fp32["size_mb"] == bf16["size_mb"] == round(weights / 1e6, 3)
    model = vitkit.load(bundle)
    assert fp32["parameters"] == sum(p.numel() for p in model.torch_model().parameters())
    meta = read_meta(bundle)
    found = reference_images(meta, limit=12)
    assert found is not None and result["reference"] == found.source
    batches = list(image_batches(found.samples, meta))
    right = sum(int((model(images).argmax(1) == labels).sum()) for images, labels in batches)
    assert fp32["n_images"] == bf16["n_images"] == len(found.samples)
    assert fp32["accuracy"] == round(right / len(found.samples), 4)
    low = vitkit.load(bundle, variant="torch-bf16")
    agree = sum(int((low(images).argmax(1) == model(images).argmax(1)).sum())
                for images, _ in batches)
    assert bf16["agreement"] == round(agree / len(found.samples), 4)
    right_bf16 = sum(int((low(images).argmax(1) == labels).sum()) for images, labels in batches)
    assert bf16["accuracy_drop"] == round(100 * (right - right_bf16) / len(found.samples), 3)


def test_without_reference_images_accuracy_is_unknown(fresh_bundle: Callable[[str], Path],
                                                      tmp_path: Path) -> None:
    bundle = fresh_bundle("cnn")
    train = dict(read_meta(bundle).train)
    train["config"] = {**train["config"], "data": str(tmp_path / "moved-away")}
    update_meta(bundle, train=train)
    result = quick(bundle, variants=["torch-fp32"])
    (variant,) = result["variants"]
    assert result["reference"] is None and "--data" in result["reference_note"]
    assert variant["accuracy"] is None and variant["accuracy_drop"] is None
    assert variant["agreement"] is None
    assert variant["latency_ms"]["p50"] > 0  # still benchmarked
    page = write_bench_report(tmp_path / "bench.html", result).read_text()
    assert 'id="scatter-missing"' in page and 'id="bench"' in page


def test_missing_runtimes_and_files_are_skipped_with_the_fix(
        fresh_bundle: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = fresh_bundle("cnn")
    record_variant(bundle, Variant(name="onnx-fp32", runtime="onnxruntime", precision="fp32",
                                   file="variants/model.onnx"))
    record_variant(bundle, Variant(name="openvino-fp32", runtime="openvino", precision="fp32",
                                   file="variants/openvino/model.xml"))
    real_require = runtimes.require

    def require(module: str) -> Any:
        if module == "onnxruntime":
            raise runtimes.RuntimeMissing("onnxruntime is not installed; pip install "
                                          "'vitkit[onnx]' to use it.")
        return real_require(module)

    monkeypatch.setattr(runtimes, "require", require)
    result = quick(bundle, variants=["torch-fp32", "onnx-fp32", "openvino-fp32"])
    onnx, openvino = by_name(result)["onnx-fp32"], by_name(result)["openvino-fp32"]
    assert onnx["status"] == "skipped" and onnx["install"] == "vitkit[onnx]"
    assert "pip install 'vitkit[onnx]'" in onnx["reason"]
    assert openvino["status"] == "skipped" and "missing" in openvino["reason"]
    for skipped in (onnx, openvino):
        assert set(skipped) >= CONTRACT_KEYS
        assert skipped["latency_ms"] is None and skipped["throughput"] == {}
    assert by_name(result)["torch-fp32"]["status"] == "ok"


def test_csv_html_and_table_are_written(trained_bundles: dict[str, Path], tmp_path: Path
                                        ) -> None:
    config = BenchConfig(variants=["torch-fp32", "torch-bf16"], batches=[1, 2], threads=1,
                         max_images=12)
    result = run_bench(trained_bundles["cnn"], config, QUICK)
    with write_csv(result, tmp_path / "bench.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["name"] for r in rows} == {"torch-fp32", "torch-bf16"}
    assert {"latency_p50_ms", "throughput_b1", "throughput_b2", "peak_rss_mb"} <= set(rows[0])
    assert float(rows[0]["latency_p50_ms"]) <= float(rows[1]["latency_p50_ms"])
    page = write_bench_report(tmp_path / "bench.html", result.to_dict()).read_text()
    assert 'id="scatter"' in page and "torch-bf16" in page
    assert bench_table(result).row_count == 2
    narrow = Console(width=80, record=True, file=io.StringIO())
    narrow.print(bench_stacked(result))
    lines = narrow.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert {"torch-fp32 (default)", "torch-bf16"} <= set(lines), \
        "one block per variant, named alone, the bundle's default marked"


def test_bad_requests_are_user_errors(trained_bundles: dict[str, Path]) -> None:
    with pytest.raises(VitkitError, match="Available: torch-fp32"):
        quick(trained_bundles["cnn"], variants=["tflite-int4"])
    with pytest.raises(VitkitError, match="Vision Transformer"):
        quick(trained_bundles["cnn"], variants=["torch-fp32"], tome=[4])
