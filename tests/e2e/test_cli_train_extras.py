"""`vitkit train --progressive --grad-checkpointing --compare-scratch` through the real CLI:
the --json keys and their agreement with the run folder, the scratch run and the bundle."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file
from tests.e2e.cli import ENV

from vitkit.evaluate.curves import diagnose, transfer_gain

# A fixed-grid ViT (timm's test_vit3, patch 16) at 64 px: progressive 32:64 trains its full
# stage at 32 px (2x2 patches, interpolated positions) and then at 64.
CONFIG = {"timm_kwargs": {"img_size": 64}, "num_workers": 0,
          "trust": {"explain_examples": 0, "feature_map": False}}


@pytest.mark.slow
def test_training_extras_end_to_end(tiny_image_folder: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)  # "pretrained" weights: a seeded model saved as a file
    save_file(timm.create_model("test_vit3", img_size=64, num_classes=10).state_dict(),
              str(tmp_path / "weights.safetensors"))
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(CONFIG))
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "vitkit", "train", str(tiny_image_folder), "--model", "test_vit3",
         "--weights", str(tmp_path / "weights.safetensors"),
         "--config", str(tmp_path / "train.yaml"),
         "--epochs", "3", "--batch-size", "8", "--progressive", "32:64", "--grad-checkpointing",
         "--compare-scratch", "--no-ood", "--no-calibrate", "--out", str(run), "--json",
         "--quiet"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)

    # every earlier key is still there, and the new ones
    assert {"bundle", "val_accuracy", "epochs_run", "skipped", "run_dir", "report", "best_epoch",
            "train_images", "val_images", "test_accuracy", "stopped_early", "seconds",
            "learning_curve", "attention", "transfer"} <= result.keys()
    assert result["attention"] == "sdpa"

    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["stage"], r["image_size"]) for r in rows] == [
        ("head", "64"), ("full", "32"), ("full", "64")]
    curve = result["learning_curve"]
    assert curve == diagnose(rows).to_dict()  # the CSV's figures, rounded to 6 digits
    assert curve["best_val_accuracy"] == pytest.approx(max(float(r["val_acc"]) for r in rows))
    assert curve["best_minus_last"] == pytest.approx(
        curve["best_val_accuracy"] - float(rows[-1]["val_acc"]))
    assert 1 <= curve["convergence_epoch"] <= 3

    transfer = result["transfer"]
    scratch = json.loads((run / "scratch" / "summary.json").read_text())
    assert transfer["pretrained_accuracy"] == result["val_accuracy"]
    assert transfer["scratch_accuracy"] == scratch["val_accuracy"]
    assert transfer["gain"] == pytest.approx(transfer_gain(result["val_accuracy"],
                                                           scratch["val_accuracy"]))
    assert transfer["scratch_learning_curve"] == scratch["learning_curve"]
    scratch_config = yaml.safe_load((run / "scratch" / "config.yaml").read_text())
    assert scratch_config["weights"] == "none"
    assert (scratch_config["seed"], scratch_config["epochs"], scratch_config["progressive"],
            scratch_config["grad_checkpointing"]) == (0, 3, "32:64", True)
    assert scratch["train_images"] == result["train_images"]
    assert not (run / "scratch" / "ood.json").exists(), "no trust steps for the comparison"

    summary = json.loads((run / "summary.json").read_text())
    assert summary["transfer"] == transfer and summary["learning_curve"] == curve
    meta = json.loads((run / "bundle" / "vitkit.json").read_text())
    assert meta["train"]["transfer"] == transfer
    assert meta["train"]["attention"] == "sdpa"
    assert meta["train"]["config"]["grad_checkpointing"] is True
    # an ordinary 64 px ViT: dynamic_img_size was for training only
    assert meta["backbone"]["timm_kwargs"] == {"img_size": 64}
    assert meta["preprocessing"]["input_size"] == [64, 64]
    page = (run / "report.html").read_text()
    assert 'id="learning-curve"' in page and "Transfer gain" in page
