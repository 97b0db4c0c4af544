"""`vitkit bench` in a subprocess: one JSON document on stdout, user errors exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitkit.classify.config import TrainConfig
from vitkit.workflows.train import run_training

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def run_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vitkit", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=300, check=False)


@pytest.fixture(scope="module")
def bundle(tiny_image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-bench") / "run"
    config = TrainConfig(data=str(tiny_image_folder), model="test_resnet", weights="none",
                         epochs=1, batch_size=8, out=str(out))
    return Path(run_training(config, progress=False).bundle)


@pytest.mark.slow
def test_bench_prints_the_json_contract(bundle: Path, tmp_path: Path) -> None:
    html = tmp_path / "bench.html"
    result = run_cli("bench", bundle, "--batch", "1,2", "--json", "--quick", "--threads", "1",
                     "--html", html)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    assert doc["threads"] == 1
    names = [v["name"] for v in doc["variants"]]
    assert names[:4] == ["torch-fp32", "torch-bf16", "torch-fp16", "torch-dynamic-int8"]
    for variant in doc["variants"]:
        assert {"name", "runtime", "precision", "size_mb", "accuracy", "accuracy_drop",
                "agreement", "latency_ms", "throughput"} <= set(variant)
        assert set(variant["latency_ms"]) == {"mean", "p50", "p95"}
        assert set(variant["throughput"]) == {"1", "2"}
    assert html.is_file() and 'id="scatter"' in html.read_text()


@pytest.mark.slow
def test_bench_user_errors_exit_2(bundle: Path) -> None:
    result = run_cli("bench", bundle, "--tome", "4", "--quick")
    assert result.returncode == 2 and "Vision Transformer" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("bench", bundle, "--batch", "1,x")
    assert result.returncode == 2 and "--batch" in result.stderr
