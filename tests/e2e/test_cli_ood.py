"""`vitkit ood fit|eval`, `vitkit drift` and `predict`'s "unknown" in a subprocess."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.conftest import class_image
from tests.e2e.cli import run_cli


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "odd"
    folder.mkdir()
    for i in range(6):
        class_image("yellow", i).save(folder / f"yellow_{i}.png")
        noise = np.random.default_rng(i).integers(0, 256, (48, 48, 3), np.uint8)
        Image.fromarray(noise).save(folder / f"noise_{i}.png")
    return folder


@pytest.mark.slow  # four CLI runs: ~60 s on 2 busy cores
def test_ood_fit_and_eval_print_one_json_document(trained_bundles: dict[str, Path],
                                                  tiny_image_folder: Path, odd_folder: Path,
                                                  tmp_path: Path) -> None:
    bundle = shutil.copytree(trained_bundles["cnn"], tmp_path / "bundle")
    fit = run_cli("ood", "fit", bundle, tiny_image_folder, "--method", "energy", "--json",
                  "-q")
    assert fit.returncode == 0, fit.stderr[-3000:]
    fitted = json.loads(fit.stdout)
    assert fitted["method"] == "energy" and fitted["rough_threshold"] is True
    assert {"threshold", "accept_rate_val", "methods", "n_train", "n_val"} <= set(fitted)

    evaluated = run_cli("ood", "eval", bundle, "--in", tiny_image_folder, "--ood-dir",
                        odd_folder, "--json", "-q")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads(evaluated.stdout)
    old_name = run_cli("ood", "eval", bundle, "--in", tiny_image_folder, "--out", odd_folder,
                       "--json", "-q")
    assert json.loads(old_name.stdout)["methods"] == report["methods"], "--out still works"
    assert report["selected"] == "energy"
    for name in ("msp", "energy", "mahalanobis", "knn", "vim", "relative_mahalanobis"):
        assert {"auroc", "fpr95"} <= set(report["methods"][name])

    bad = run_cli("ood", "fit", bundle, "--method", "magic")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.slow  # three CLI runs: ~40 s on 2 busy cores
def test_predict_says_unknown_and_drift_says_drifted(trained_bundles: dict[str, Path],
                                                     odd_folder: Path) -> None:
    bundle = trained_bundles["vit"]  # fitted by `train` itself
    predicted = run_cli("predict", bundle, odd_folder, "--json")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    results = json.loads(predicted.stdout)
    assert sum(r["label"] == "unknown" for r in results) >= 10  # of 12
    assert all({"ood", "ood_score", "topk"} <= set(r) for r in results)

    plain = json.loads(run_cli("predict", bundle, odd_folder, "--json", "--no-ood").stdout)
    assert all(r["label"] != "unknown" and "ood" not in r for r in plain)

    drift = run_cli("drift", bundle, odd_folder, "--json", "-q", "--permutations", "100")
    assert drift.returncode == 0, drift.stderr[-3000:]
    document = json.loads(drift.stdout)
    assert {"n_new", "ood_share", "expected_ood_share", "feature_distance", "class_mix",
            "drifted", "reasons"} <= set(document)
    assert {"statistic", "p_value"} <= set(document["feature_distance"])
    assert {"new", "reference", "tvd", "p_value"} <= set(document["class_mix"])
    assert document["drifted"] is True and document["reasons"]
