"""The Predictor over runtimes: built-in torch variants, variant records, clear errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.bundle import read_meta
from vitkit.compress.reference import compare, image_batches, reference_images
from vitkit.errors import BundleError
from vitkit.predictor.runtimes import RuntimeMissing, require
from vitkit.predictor.variants import Variant, find_variant, list_variants, record_variant


@pytest.mark.parametrize("family", ["cnn", "vit"])
def test_builtin_torch_variants_agree_with_fp32(family: str,
                                                trained_bundles: dict[str, Path]) -> None:
    bundle = trained_bundles[family]
    meta = read_meta(bundle)
    reference = reference_images(meta)
    assert reference is not None and reference.samples
    batches = list(image_batches(reference.samples, meta, batch_size=8))
    fp32 = vitkit.load(bundle)
    assert fp32.variant.name == "torch-fp32" and fp32.model is not None
    expected = torch.cat([fp32(images) for images, _ in batches])
    scale = float(expected.std())  # the tiny bundles' logits: cnn ~0.005, vit ~0.15
    # Bounds relative to that scale (a fixed 0.5 on logits of 0.01 could never fail). Measured
    # max |diff| / std: bf16 0.0060 (cnn) / 0.0018 (vit), dynamic int8 0.0062 / 0.016; worst
    # 1 - cosine of the centred logits 8.3e-5 (vit int8); the fp32 top-2 margins are 67x (cnn)
    # and 100x (vit) the largest difference, so every top-1 must agree. About 3x margin.
    for name, ratio in (("torch-bf16", 0.02), ("torch-dynamic-int8", 0.05)):
        variant = vitkit.load(bundle, variant=name)
        assert variant.variant.name == name
        result = compare(fp32, variant, batches)
        assert result.n_images == len(reference.samples)
        assert result.top1_agreement == 1.0, (name, result)
        assert 0.0 < result.max_abs_diff <= ratio * scale, (name, result, scale)
        got = torch.cat([variant(images) for images, _ in batches])
        cosine = torch.nn.functional.cosine_similarity(
            got - got.mean(1, keepdim=True), expected - expected.mean(1, keepdim=True), dim=1)
        assert float(cosine.min()) >= 0.9995, (name, cosine)
    same = compare(fp32, vitkit.load(bundle), batches)
    assert same.max_abs_diff == 0.0 and same.top1_agreement == 1.0
    assert same.accuracy == same.reference_accuracy and same.accuracy_drop == 0.0


def test_variant_records_replace_by_name_and_unknown_names_list_the_options(
        fresh_bundle: Callable[[str], Path]) -> None:
    bundle = fresh_bundle("cnn")
    record_variant(bundle, Variant(name="onnx-fp32", runtime="onnxruntime", precision="fp32",
                                   file="variants/model.onnx", accuracy=0.5))
    record_variant(bundle, Variant(name="onnx-fp32", runtime="onnxruntime", precision="fp32",
                                   file="variants/model.onnx", accuracy=0.75))
    meta = read_meta(bundle)
    names = [v.name for v in list_variants(meta)]
    assert names.count("onnx-fp32") == 1 and names[0] == "torch-fp32"
    assert find_variant(meta, "onnx-fp32").accuracy == 0.75
    assert find_variant(meta, "onnx-fp32").created
    with pytest.raises(BundleError, match="Available: torch-fp32"):
        find_variant(meta, "tflite-int4", bundle)
    with pytest.raises(BundleError, match="missing; export it again"):
        vitkit.load(bundle, variant="onnx-fp32")


def test_a_missing_runtime_names_the_extra_to_install() -> None:
    with pytest.raises(RuntimeMissing, match=r"pip install 'vitkit\[openvino\]'"):
        _raise_for("nncf")


def _raise_for(module: str) -> None:
    import sys

    saved = sys.modules.get(module)
    sys.modules[module] = None  # type: ignore[assignment]  # makes the import fail
    try:
        require(module)
    finally:
        if saved is not None:
            sys.modules[module] = saved
        else:
            del sys.modules[module]


def test_predictions_are_float32_cpu_logits(trained_bundles: dict[str, Path]) -> None:
    predictor = vitkit.load(trained_bundles["cnn"], variant="torch-bf16")
    size = predictor.preprocessing.input_size
    logits = predictor(torch.randn(2, 3, *size))
    assert logits.dtype == torch.float32 and logits.shape == (2, 3)


def test_eval_and_predict_run_on_a_chosen_variant(trained_bundles: dict[str, Path],
                                                  tiny_image_folder: Path) -> None:
    from vitkit.workflows.evaluate import run_eval

    fp32 = run_eval(trained_bundles["cnn"], str(tiny_image_folder), progress=False)
    int8 = run_eval(trained_bundles["cnn"], str(tiny_image_folder), progress=False,
                    variant="torch-dynamic-int8")
    assert fp32["variant"] == "torch-fp32" and int8["variant"] == "torch-dynamic-int8"
    assert int8["n"] == fp32["n"] and abs(int8["accuracy"] - fp32["accuracy"]) <= 0.1
