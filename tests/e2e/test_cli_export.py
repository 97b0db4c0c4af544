"""`vitkit export` in a subprocess: one JSON document on stdout, files and records in the
bundle, exit 2 with a message for formats vitkit cannot make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.e2e.cli import run_cli, train_tiny

from vitkit.bundle import read_meta

EXPORT_KEYS = {"name", "runtime", "precision", "file", "size_mb", "parity", "accuracy",
               "accuracy_drop"}



@pytest.fixture(scope="module")
def bundle(tiny_image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-export") / "run"
    return train_tiny(tiny_image_folder, out, "test_resnet")


@pytest.mark.slow
def test_export_all_json(bundle: Path, tiny_image_folder: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    proc = run_cli("export", bundle, "--format", "all", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    result = json.loads(proc.stdout)  # exporters' chatter stays off stdout
    assert result["bundle"] == str(bundle) and result["warnings"] == []
    exports = {e["name"]: e for e in result["exports"]}
    assert set(exports) == {"onnx-fp32", "openvino-fp32", "torchscript-fp32", "mobile-fp32"}
    for entry in exports.values():
        assert set(entry) >= EXPORT_KEYS, entry
        assert (bundle / entry["file"]).is_file() and entry["size_mb"] > 0
        assert entry["precision"] == "fp32" and entry["parity"]["ok"] is True
        assert entry["parity"]["top1_agreement"] == 1.0
        assert entry["parity"]["max_abs_diff"] <= 1e-4
        assert isinstance(entry["accuracy"], float)
    recorded = {v["name"]: v for v in read_meta(bundle).variants}
    assert {"onnx-fp32", "openvino-fp32", "torchscript-fp32"} <= set(recorded)
    assert recorded["onnx-fp32"]["parity"] == exports["onnx-fp32"]["parity"]

    predicted = run_cli("predict", bundle, tiny_image_folder / "red", "--variant",
                        "onnx-fp32", "--json")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert len(json.loads(predicted.stdout)) == 12


@pytest.mark.slow
def test_export_coreml_is_a_clear_user_error(bundle: Path) -> None:
    proc = run_cli("export", bundle, "--format", "coreml")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "macOS" in " ".join(proc.stderr.split())
