"""Exported anomaly feature extractors: the same scores and maps as PyTorch, measured at export,
recorded in the bundle, and used by `vitkit anomaly score --variant`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.anomaly.test_detector import BOXES, fit
from tests.anomaly.woven import to_image, with_stain, woven_texture
from tests.e2e.cli import run_cli

from vitkit.anomaly.detector import load_anomaly_detector as load_detector
from vitkit.bundle import read_meta, update_meta
from vitkit.errors import BundleError, VitkitError
from vitkit.workflows.anomaly_export import run_anomaly_export


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "module"), [("openvino-fp32", "openvino"),
                                                 ("onnx-fp32", "onnxruntime")])
def test_an_exported_extractor_scores_like_pytorch(variant: str, module: str, normal_dir: Path,
                                                   tmp_path: Path) -> None:
    pytest.importorskip(module)
    bundle = fit(normal_dir, tmp_path / "bundle", "patchcore")
    result = run_anomaly_export(bundle, [variant])
    parity = result["variants"][0]["parity"]
    assert parity["n_images"] == 14 and parity["label_agreement"] == 1.0
    assert parity["max_score_diff"] < 1e-4 and parity["max_map_diff"] < 1e-4
    recorded = read_meta(bundle).model_extra["anomaly"]["variants"]
    assert [v["name"] for v in recorded] == [variant]
    queries = [to_image(woven_texture(400)), with_stain(woven_texture(401), BOXES[0])]
    torch_raw, torch_maps = load_detector(bundle, "cpu", variant="torch-fp32").raw_scores(queries)
    raw, maps = load_detector(bundle, "cpu", variant=variant).raw_scores(queries)
    np.testing.assert_allclose(raw.numpy(), torch_raw.numpy(), rtol=1e-4)
    np.testing.assert_allclose(maps.numpy(), torch_maps.numpy(), rtol=1e-4, atol=1e-4)
    assert raw[1] > raw[0]  # the stain still scores higher
    record = read_meta(bundle).model_extra["anomaly"]
    assert record["default_variant"] == variant
    update_meta(bundle, anomaly={**record, "default_variant": "onnx-int4"})
    with pytest.warns(RuntimeWarning, match="onnx-int4 cannot run here"):
        fallback = load_detector(bundle, "cpu")
    np.testing.assert_allclose(fallback.raw_scores(queries)[0].numpy(), torch_raw.numpy(),
                               rtol=1e-6)


@pytest.mark.slow
def test_cli_scores_with_a_bf16_variant_and_refuses_missing_ones(normal_dir: Path,
                                                                 tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    bundle = fit(normal_dir, tmp_path / "bundle", "patchcore")
    exported = run_cli("anomaly", "export", bundle, "--json")
    assert exported.returncode == 0, exported.stderr
    entry = json.loads(exported.stdout)["variants"][0]
    assert entry["name"] == "openvino-bf16" and entry["parity"]["label_agreement"] == 1.0
    assert entry["parity"]["max_raw_rel_diff"] < 0.05  # bf16 arithmetic
    query = tmp_path / "stain.png"
    with_stain(woven_texture(402), BOXES[0]).save(query)
    scored = {}
    for name in ("torch-fp32", "openvino-bf16"):
        result = run_cli("anomaly", "score", bundle, query, "--variant", name, "--json")
        assert result.returncode == 0, result.stderr
        scored[name] = json.loads(result.stdout)[0]
    default = run_cli("anomaly", "score", bundle, query, "--json")  # the export's variant
    assert json.loads(default.stdout)[0]["raw_score"] == scored["openvino-bf16"]["raw_score"]
    assert scored["openvino-bf16"]["label"] == scored["torch-fp32"]["label"] == "anomaly"
    assert abs(scored["openvino-bf16"]["raw_score"] / scored["torch-fp32"]["raw_score"] - 1) < 0.05
    missing = run_cli("anomaly", "score", bundle, query, "--variant", "onnx-fp32")
    assert missing.returncode == 2 and "anomaly export" in missing.stderr


def test_patchmean_and_unknown_variants_are_refused(normal_dir: Path, tmp_path: Path) -> None:
    bundle = fit(normal_dir, tmp_path / "bundle", "patchmean")
    with pytest.raises(VitkitError, match="no network to export"):
        run_anomaly_export(bundle, ["openvino-fp32"])
    with pytest.raises(VitkitError, match="unknown anomaly variant"):
        run_anomaly_export(bundle, ["tensorrt"])
    with pytest.raises(BundleError, match="no variants"):
        load_detector(bundle, "cpu", variant="openvino-fp32")


@pytest.mark.slow
def test_an_anomaly_variant_is_an_ordinary_variant_confined_to_its_bundle(
        normal_dir: Path, tmp_path: Path) -> None:
    """The recorded entry validates as a predictor Variant; an edited entry or a file outside
    the bundle is refused with the bundle named."""
    pytest.importorskip("onnxruntime")
    from vitkit.anomaly.export import open_variant, recorded_variants

    bundle = fit(normal_dir, tmp_path / "bundle", "patchcore")
    run_anomaly_export(bundle, ["onnx-fp32"])
    record = read_meta(bundle).model_extra["anomaly"]
    (variant,) = recorded_variants(bundle, record)
    assert (variant.runtime, variant.precision, variant.options) == (
        "onnxruntime", "fp32", {"outputs": "all"})
    maps = open_variant(bundle, record, "onnx-fp32")(_grey(bundle))
    assert len(maps) >= 1 and all(m.ndim == 4 for m in maps)
    outside = {**record["variants"][0], "file": "../elsewhere.onnx"}
    with pytest.raises(BundleError, match="outside"):
        open_variant(bundle, {**record, "variants": [outside]}, "onnx-fp32")
    edited = {**record["variants"][0], "runtime": "tensorrt"}
    with pytest.raises(BundleError, match=r"anomaly.variants\[0\].*not a valid variant"):
        open_variant(bundle, {**record, "variants": [edited]}, "onnx-fp32")


def _grey(bundle: Path) -> torch.Tensor:
    height, width = load_detector(bundle, "cpu", variant="torch-fp32").input_size
    return torch.full((1, 3, height, width), 0.5)
