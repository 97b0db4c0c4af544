"""`vitkit quantize` in a subprocess: one JSON document on stdout, exit 2 on a refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitkit.bundle import read_meta
from vitkit.classify.config import TrainConfig
from vitkit.workflows.train import run_training

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
KEYS = {"bundle", "variant", "runtime", "precision", "accuracy", "reference_accuracy",
        "accuracy_drop", "agreement", "size_mb", "file"}


def run_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vitkit", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=300, check=False)


@pytest.fixture(scope="module")
def bundle(tiny_image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-quantize") / "run"
    config = TrainConfig(data=str(tiny_image_folder), model="test_vit", weights="none",
                         epochs=1, batch_size=8, out=str(out))
    return Path(run_training(config, progress=False).bundle)


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
