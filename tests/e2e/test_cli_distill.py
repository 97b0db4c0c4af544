"""`vitkit distill` in subprocesses: a CNN teacher bundle taught to a ViT student, offline."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.e2e.cli import run_cli

import vitkit


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_distill_cnn_teacher_into_vit_student(tmp_path: Path, tiny_image_folder: Path,
                                              two_class_folder: Path) -> None:
    trained = json_out(run_cli("train", tiny_image_folder, "--model", "test_resnet", "--weights",
                               "none", "--epochs", 1, "--out", tmp_path / "teacher", "--json",
                               "--quiet", cwd=tmp_path))
    teacher = trained["bundle"]

    result = json_out(run_cli("distill", teacher, tiny_image_folder, "--student", "test_vit",
                              "--weights", "none", "--epochs", 1, "--no-augment",
                              "--temperature", 2, "--alpha", 0.7, "--out", tmp_path / "student",
                              "--json", "--quiet", cwd=tmp_path))

    assert set(result) == set(trained) | {"teacher"}, "train's keys plus 'teacher'"
    assert result["teacher"]["bundle"] == teacher
    assert result["teacher"]["model"] == "test_resnet"
    assert (result["teacher"]["temperature"], result["teacher"]["alpha"]) == (2.0, 0.7)
    assert result["teacher"]["forward_images"] == result["train_images"]
    assert Path(result["bundle"]) == tmp_path / "student" / "bundle"
    predictor = vitkit.load(result["bundle"])
    assert predictor.labels == ["blue", "green", "red"]
    assert predictor(torch.randn(1, 3, 160, 160)).shape == (1, 3)
    assert (tmp_path / "student" / "report.html").is_file()

    mismatch = run_cli("distill", teacher, two_class_folder, "--student", "test_vit",
                       "--weights", "none", "--out", tmp_path / "bad", cwd=tmp_path)
    assert mismatch.returncode == 2
    assert "Traceback" not in mismatch.stderr
    assert "only the teacher: green" in " ".join(mismatch.stderr.split())

    bad_mode = run_cli("distill", teacher, tiny_image_folder, "--mode", "sideways",
                       "--out", tmp_path / "bad2", cwd=tmp_path)
    assert bad_mode.returncode == 2
    assert "mode" in bad_mode.stderr
