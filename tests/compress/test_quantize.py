"""`quantize_bundle`: every recipe yields a variant that loads and is measured; a variant that
loses too much accuracy is refused and leaves nothing behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.bundle import read_meta
from vitkit.compress import quantize as q
from vitkit.compress.quantize import QuantizationRefused, quantize_bundle, resolve_plan
from vitkit.errors import DataError, VitkitError
from vitkit.predictor.variants import find_variant

NEEDS = {"openvino": ("openvino", "nncf"), "onnxruntime": ("onnx", "onnxruntime"), "torch": ()}


def _require(runtime: str) -> None:
    for module in NEEDS[runtime]:
        pytest.importorskip(module)


def _recorded_names(bundle: Path) -> list[str]:
    return [entry["name"] for entry in read_meta(bundle).variants]


@pytest.mark.slow
@pytest.mark.parametrize(("family", "runtime", "method", "name"), [
    ("vit", "openvino", "static", "openvino-int8"),
    ("cnn", "openvino", "static", "openvino-int8"),
    ("vit", "onnxruntime", "static", "onnx-int8"),
    ("cnn", "onnxruntime", "dynamic", "onnx-dynamic-int8"),
    ("cnn", "openvino", "bf16", "openvino-bf16"),
    ("vit", "torch", "dynamic", "torch-dynamic-int8"),
    ("vit", "torch", "fp16", "torch-fp16"),
])
def test_each_recipe_writes_a_measured_variant_that_loads(
        family: str, runtime: str, method: str, name: str,
        fresh_bundle: Callable[[str], Path]) -> None:
    _require(runtime)
    bundle = fresh_bundle(family)
    result = quantize_bundle(bundle, method=method, runtime=runtime)
    summary = result.to_dict()
    assert summary["variant"] == name and summary["runtime"] == runtime
    assert summary["refused"] is False and summary["agreement"] is not None
    assert summary["agreement"] >= 0.8, summary
    variant = find_variant(read_meta(bundle), name)
    assert variant.parity is not None and variant.parity["n_images"] == 6
    assert variant.parity["top1_agreement"] == summary["agreement"]
    assert variant.accuracy == summary["accuracy"] is not None
    assert variant.accuracy_drop == summary["accuracy_drop"]
    assert variant.options["method"] == method
    if runtime == "torch":
        assert variant.file is None and summary["size_mb"] is None
    else:
        assert variant.file == summary["file"] and (bundle / variant.file).is_file()
        assert summary["size_mb"] > 0
        leftovers = [p.name for p in (bundle / "variants").iterdir() if p.name.startswith(".")]
        assert not leftovers
    if method == "static":
        assert variant.options["calibration_images"] == 30  # the tiny folder's train split
    if name == "openvino-int8":
        assert variant.options["model_type"] == ("transformer" if family == "vit" else None)
    predictor = vitkit.load(bundle, variant=name)
    size = tuple(read_meta(bundle).preprocessing["input_size"])
    logits = predictor(torch.zeros(2, 3, *size))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_defaults_pick_static_int8_on_the_fastest_runtime(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    installed = {"openvino": True, "nncf": True, "onnx": True, "onnxruntime": True}
    monkeypatch.setattr(q, "available", lambda module: installed.get(module, False))
    monkeypatch.setattr(q, "require", lambda module: None)
    assert resolve_plan() == q.Plan("openvino", "static", "openvino-int8", "int8")
    assert resolve_plan(method="dynamic").variant == "onnx-dynamic-int8"
    assert resolve_plan(method="bf16").variant == "openvino-bf16"
    assert resolve_plan(runtime="torch").variant == "torch-dynamic-int8"
    installed["nncf"] = False
    assert resolve_plan().variant == "onnx-int8"
    installed["onnxruntime"] = False
    assert resolve_plan().variant == "torch-dynamic-int8"


@pytest.mark.parametrize(("method", "runtime", "hint"), [
    ("dynamic", "openvino", "--method static"),
    ("static", "torch", "--method dynamic"),
    ("fp16", "onnxruntime", "--method bf16"),
    ("int4", None, "must be one of"),
])
def test_unsupported_combinations_say_what_to_use(method: str, runtime: str | None,
                                                  hint: str) -> None:
    with pytest.raises(VitkitError, match=hint):
        resolve_plan(method, runtime)


@pytest.mark.slow
def test_an_over_threshold_drop_is_refused_and_leaves_nothing(
        fresh_bundle: Callable[[str], Path]) -> None:
    _require("onnxruntime")
    bundle = fresh_bundle("vit")
    before = (bundle / "vitkit.json").read_text()
    # The drop is about 0 points, so a negative threshold forces the refusal.
    with pytest.raises(QuantizationRefused) as refused:
        quantize_bundle(bundle, method="static", runtime="onnxruntime", max_drop=-1.0)
    assert refused.value.exit_code == 2
    message = str(refused.value)
    assert "more than --max-drop -1" in message and "not written" in message
    assert "--method bf16" in message and "--runtime openvino" in message
    assert refused.value.details["refused"] is True
    assert refused.value.details["accuracy_drop"] is not None
    assert (bundle / "vitkit.json").read_text() == before
    assert not (bundle / "variants").exists()


def test_a_refusal_keeps_an_earlier_accepted_variant(fresh_bundle: Callable[[str], Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _require("onnxruntime")
    bundle = fresh_bundle("cnn")
    quantize_bundle(bundle, method="dynamic", runtime="onnxruntime")
    kept = find_variant(read_meta(bundle), "onnx-dynamic-int8")
    onnx_file = bundle / str(kept.file)
    content = onnx_file.read_bytes()
    # A candidate that always predicts the wrong class drops accuracy to (near) zero.
    real_build = q._build

    def wrong_build(*args: object, **kwargs: object) -> tuple[object, str | None, dict]:
        runtime, file, options = real_build(*args, **kwargs)  # type: ignore[arg-type]
        return (lambda batch: -runtime(batch)), file, options

    monkeypatch.setattr(q, "_build", wrong_build)
    with pytest.raises(QuantizationRefused, match="drops accuracy by"):
        quantize_bundle(bundle, method="dynamic", runtime="onnxruntime", max_drop=1.0)
    assert find_variant(read_meta(bundle), "onnx-dynamic-int8") == kept
    assert onnx_file.read_bytes() == content
    assert sorted(p.name for p in (bundle / "variants").iterdir()) == ["onnx-dynamic-int8"]


def test_without_validation_images_accuracy_is_unknown_not_invented(
        fresh_bundle: Callable[[str], Path], tiny_image_folder: Path) -> None:
    bundle = fresh_bundle("cnn")
    meta_file = bundle / "vitkit.json"
    meta = json.loads(meta_file.read_text())
    meta["train"]["config"]["data"] = str(bundle / "moved-away")
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="--calib DATA"):
        quantize_bundle(bundle, method="static", runtime="onnxruntime")
    result = quantize_bundle(bundle, method="dynamic", runtime="torch", max_drop=-1.0)
    assert result.comparison is None and result.notes
    variant = find_variant(read_meta(bundle), "torch-dynamic-int8")
    assert variant.accuracy is None and variant.accuracy_drop is None and variant.parity is None
    assert result.to_dict()["accuracy"] is None
    assert _recorded_names(bundle) == ["torch-dynamic-int8"]


@pytest.mark.slow
def test_token_merging_is_baked_into_a_quantized_vit_variant(
        fresh_bundle: Callable[[str], Path]) -> None:
    bundle = fresh_bundle("vit")
    result = quantize_bundle(bundle, method="static", runtime="openvino", tome=2,
                             max_drop=100.0)
    assert result.variant.name == "openvino-int8-tome2"
    assert result.variant.options["tome_r"] == 2
    predictor = vitkit.load(bundle, variant="openvino-int8-tome2")
    size = predictor.preprocessing.input_size
    for batch in (1, 3):  # the merged graph keeps a dynamic batch
        assert predictor(torch.randn(batch, 3, *size)).shape == (batch, 3)
    with pytest.raises(VitkitError, match="file-based runtime"):
        quantize_bundle(bundle, method="dynamic", runtime="torch", tome=2)
