"""`vitkit bench` in a subprocess: one JSON document on stdout, user errors exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.e2e.cli import run_cli, train_tiny


@pytest.fixture(scope="module")
def bundle(tiny_image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-bench") / "run"
    return train_tiny(tiny_image_folder, out, "test_resnet")


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
