"""`vitkit quantize` in a subprocess: one JSON document on stdout, exit 2 on a refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.e2e.cli import run_cli, train_tiny

from vitkit.bundle import read_meta

KEYS = {"bundle", "variant", "runtime", "precision", "accuracy", "reference_accuracy",
        "accuracy_drop", "agreement", "size_mb", "file"}



@pytest.fixture(scope="module")
def bundle(tiny_image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-quantize") / "run"
    return train_tiny(tiny_image_folder, out, "test_vit")


@pytest.mark.slow
def test_quantize_json_writes_the_default_variant(bundle: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    proc = run_cli("quantize", bundle, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    result = json.loads(proc.stdout)  # nothing else on stdout, NNCF's bars included
    assert set(result) >= KEYS and result["refused"] is False
    assert (result["variant"], result["runtime"], result["precision"]) == (
        "openvino-int8", "openvino", "int8")
    assert result["agreement"] is not None and result["accuracy"] is not None
    assert (bundle / result["file"]).is_file() and result["size_mb"] > 0
    recorded = {v["name"]: v for v in read_meta(bundle).variants}
    assert recorded["openvino-int8"]["accuracy"] == result["accuracy"]


@pytest.mark.slow
def test_quantize_refuses_an_over_threshold_drop_with_exit_2(bundle: Path) -> None:
    before = (bundle / "vitkit.json").read_text()
    proc = run_cli("quantize", bundle, "--runtime", "torch", "--method", "bf16",
                   "--max-drop", "-1", "--json", "--quiet")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "more than --max-drop -1" in " ".join(proc.stderr.split())  # rich wraps lines
    result = json.loads(proc.stdout)
    assert result["refused"] is True and result["variant"] == "torch-bf16"
    assert result["accuracy_drop"] is not None and result["file"] is None
    assert (bundle / "vitkit.json").read_text() == before


def test_quantize_rejects_an_unknown_method_with_exit_2(tmp_path: Path) -> None:
    proc = run_cli("quantize", tmp_path, "--method", "int4")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--method must be one of" in proc.stderr
