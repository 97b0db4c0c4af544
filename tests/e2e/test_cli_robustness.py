"""`vitkit robustness`, `vitkit calibrate` and `--tta` on eval/predict, in a subprocess."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import make_image_folder
from tests.e2e.cli import run_cli
from tests.workflows.bundles import sharpened


@pytest.mark.slow
def test_robustness_json_and_files(fresh_bundle: Callable[[str], Path],
                                   tiny_image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("robustness", fresh_bundle("cnn"), tiny_image_folder, "--json", "--quiet",
                   "--limit", "6", "--corruptions", "noise,contrast", "--noise", "0.1",
                   "--eps", "2", "--pgd-steps", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["n"] == 6 and result["variant"] == "torch-fp32"
    assert [(c["name"], c["severity"]) for c in result["corruptions"]] == [
        ("noise", 0.1), ("contrast", 0.5), ("contrast", 1.5)]
    assert [(a["attack"], a["epsilon"], a["transferred"]) for a in result["adversarial"]] == [
        ("fgsm", 2.0, False), ("pgd", 2.0, False)]
    assert {"clean_accuracy", "seconds"} <= set(result)
    assert json.loads((out / "robustness.json").read_text())["n"] == 6
    assert (out / "robustness.png").is_file()


def test_robustness_rejects_an_unknown_corruption_with_exit_2(tmp_path: Path) -> None:
    proc = run_cli("robustness", tmp_path, tmp_path, "--corruptions", "fog")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown corruption" in proc.stderr


@pytest.mark.slow
def test_calibrate_then_eval_and_predict_with_tta(fresh_bundle: Callable[[str], Path],
                                                  tmp_path: Path) -> None:
    bundle = sharpened(fresh_bundle("cnn"), 1000.0)
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=4, seed=1)
    make_image_folder(data / "val", per_class=8, seed=2)
    proc = run_cli("calibrate", bundle, data, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    calibration = json.loads(proc.stdout)
    assert {"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "fitted_on",
            "n"} <= set(calibration)
    assert calibration["n"] == 24 and calibration["files"] == []  # not in a run folder

    proc = run_cli("eval", bundle, data, "--json", "--quiet", "--tta", "flip",
                   "--variant", "torch-dynamic-int8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads(proc.stdout)
    assert evaluated["temperature"] == calibration["temperature"]
    assert evaluated["tta"]["views"] == 2
    assert evaluated["tta"]["seconds_per_image"] > 0 and evaluated["tta"]["slowdown"] > 0

    proc = run_cli("predict", bundle, data / "val" / "red", "--json", "--tta", "flip-scale")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(json.loads(proc.stdout)) == 8
    assert "TTA flip-scale: 4 views" in proc.stderr


@pytest.mark.slow
def test_calibrate_refuses_flat_logits_with_exit_2(fresh_bundle: Callable[[str], Path],
                                                   tmp_path: Path) -> None:
    bundle = fresh_bundle("cnn")  # 2 epochs from random init: logits of about 0.01
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=4, seed=1)
    make_image_folder(data / "val", per_class=8, seed=2)
    before = (bundle / "vitkit.json").read_text()
    proc = run_cli("calibrate", bundle, data, "--quiet")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "edge of the range" in " ".join(proc.stderr.split())
    assert (bundle / "vitkit.json").read_text() == before
