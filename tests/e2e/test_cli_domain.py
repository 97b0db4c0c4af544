"""`vitkit train --domain-adapt dann --compare-source-only` in a subprocess, offline, on tiny
generated data with a colour shift: the --json keys and that its numbers agree with the run
folder, the bundle, the source-only run and `vitkit eval` on the same target images."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import ImageOps
from tests.conftest import ImageGen
from tests.e2e.cli import run_cli

from vitkit.workflows.evaluate import run_eval

CLASSES = ("red", "green", "blue")
RECORD_KEYS = {"method", "target", "target_images", "target_held_out", "target_skipped",
               "target_eval", "target_eval_images", "source_accuracy", "target_accuracy",
               "domain_accuracy", "shift", "source_only", "target_accuracy_gain", "settings"}
SHIFT_KEYS = {"ood_share", "expected_ood_share", "ood_method", "mmd", "mmd_p_value",
              "domain_probe_accuracy"}


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_dann_with_a_source_only_baseline_through_the_cli(tmp_path: Path,
                                                           tiny_image_folder: Path,
                                                           imagegen: type[ImageGen]) -> None:
    unlabelled, labelled = tmp_path / "target", tmp_path / "target-eval"
    for i in range(6):
        for label in CLASSES:
            folder = (unlabelled / f"shot-{i % 2}") if i < 4 else (labelled / label)
            folder.mkdir(parents=True, exist_ok=True)
            ImageOps.invert(imagegen.image(label, 100 + i, 48)).save(folder / f"{label}{i}.png")
    broken = imagegen.broken(unlabelled / "broken")
    config = tmp_path / "config.yaml"
    config.write_text("image_size: 32\nnum_workers: 0\n"
                      "trust: {explain_examples: 0, feature_map: false}\n")
    out = tmp_path / "run"

    result = json_out(run_cli(
        "train", tiny_image_folder, "--model", "test_resnet", "--weights", "none",
        "--epochs", 2, "--batch-size", 8, "--config", config, "--out", out,
        "--target-domain", unlabelled, "--domain-adapt", "dann", "--target-eval", labelled,
        "--compare-source-only", "--json", "--quiet", cwd=tmp_path))

    record = result["domain_adaptation"]
    assert set(record) == RECORD_KEYS
    assert set(record["shift"]["before"]) == set(record["shift"]["after"]) == SHIFT_KEYS
    assert record == json.loads((out / "domain_adaptation.json").read_text())
    assert record == json.loads((out / "summary.json").read_text())["domain_adaptation"]
    bundle_meta = json.loads((Path(result["bundle"]) / "vitkit.json").read_text())
    assert bundle_meta["train"]["domain_adaptation"] == record
    assert 'id="domain-adaptation"' in (out / "report.html").read_text()

    # The target folder: 4 x 3 readable images split into adapted and held out, 3 broken.
    assert record["target_images"] + record["target_held_out"] == 12
    assert record["target_skipped"] == len(broken)
    skipped_rows = (out / "target_skipped.csv").read_text().splitlines()[1:]
    assert sorted(Path(r.split(",")[0]).name for r in skipped_rows) == \
        sorted(p.name for p in broken)
    assert record["target_eval_images"] == 6
    steps_per_epoch = -(-result["train_images"] // 8)
    assert record["settings"]["adapted_steps"] == steps_per_epoch  # one full epoch

    baseline = json.loads((out / "source-only" / "summary.json").read_text())
    assert baseline["domain_adaptation"] is None
    assert record["source_accuracy"] == result["val_accuracy"]
    assert record["source_only"]["source_accuracy"] == baseline["val_accuracy"]
    for bundle, accuracy in ((result["bundle"], record["target_accuracy"]),
                             (baseline["bundle"], record["source_only"]["target_accuracy"])):
        assert run_eval(Path(bundle), str(labelled), progress=False)["accuracy"] == \
            pytest.approx(accuracy, abs=1e-6)
    assert record["target_accuracy_gain"] == pytest.approx(
        record["target_accuracy"] - record["source_only"]["target_accuracy"])
    for shift in record["shift"].values():
        assert 0.0 <= shift["ood_share"] <= 1.0
        assert 0.0 < shift["mmd_p_value"] <= 1.0
        assert 0.0 <= shift["domain_probe_accuracy"] <= 1.0
    assert 0.0 <= record["domain_accuracy"] <= 1.0
