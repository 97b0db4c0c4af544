"""The report's Trust part, rendered from fixture files with the shapes the trust steps write."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image
from tests.e2e.cli import run_cli

from vitkit.evaluate.fairness import group_fairness
from vitkit.report import write_report
from vitkit.report.feature_map import compute_feature_map, write_feature_map

if TYPE_CHECKING:
    from conftest import FakeRun

EVIL = "<b>evil</b>"
TRUST_FILES = ["calibration.json", "ood.json", "explanations/explanations.json",
               "feature_map.json", "robustness.json", "fairness.json"]


def section(page: str, section_id: str) -> str:
    match = re.search(rf'<section class="card trust" id="{section_id}">(.*?)</section>', page,
                      re.S)
    assert match, f"no trust section {section_id!r}"
    return match.group(1)


def png(path: Path, colour: tuple[int, int, int] = (200, 40, 40), size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, format="PNG")
    return path


def write_trust_files(run_dir: Path) -> None:
    """One file of each kind, in the shapes of the steps (robustness.png left out: redrawn)."""
    bins = {"edges": [0.0, 0.5, 1.0], "counts": [10, 90], "accuracy": [0.4, 0.9],
            "confidence": [0.45, 0.97]}
    (run_dir / "calibration.json").write_text(json.dumps({
        "temperature": 1.7, "ece_before": 0.12, "ece_after": 0.031, "nll_before": 0.612,
        "nll_after": 0.418, "fitted_on": "val", "n": 153, "accuracy": 0.941, "n_bins": 2,
        "reliability": {"before": bins, "after": bins}}))
    png(run_dir / "reliability.png")
    (run_dir / "ood.json").write_text(json.dumps({
        "method": "mahalanobis", "threshold": 41.25, "val_accept_rate": 0.95,
        "methods": {"mahalanobis": {"auroc": 0.97, "fpr95": 0.12},
                    "energy": {"auroc": 0.88, "fpr95": 0.4}}}))
    explanations = []
    for i, (true, pred) in enumerate([("ants", "ants"), ("bees", "ants"), (EVIL, EVIL)]):
        png(run_dir / "explanations" / f"img{i}.png", (40, 40 + 60 * i, 200))
        explanations.append({"path": f"/data/val/{true}/img{i}.jpg", "label": pred,
                             "score": 0.9 - 0.1 * i, "class": pred, "class_score": 0.9,
                             "method": "gradcam", "overlay": f"img{i}.png",
                             "map": f"img{i}.npy", "true": true})
    explanations.append({"path": "/data/x.jpg", "label": "ants", "score": 0.5, "class": "bees",
                         "method": "gradcam", "overlay": "gone.png", "map": "gone.npy"})
    (run_dir / "explanations" / "explanations.json").write_text(json.dumps(explanations))
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (10, 8)), rng.normal(9, 1, (10, 8))])
    targets = np.repeat([0, 1], 10)
    predictions = targets.copy()
    predictions[3] = 1
    write_feature_map(run_dir, compute_feature_map(features, targets, predictions),
                      ["ants", "bees"], [f"v{i}.jpg" for i in range(20)])
    (run_dir / "robustness.json").write_text(json.dumps({
        "clean_accuracy": 0.94, "n": 153, "variant": "torch-fp32",
        "corruptions": [{"name": "gaussian_noise", "severity": 0.1, "accuracy": 0.9,
                         "drop": 0.04},
                        {"name": "gaussian_noise", "severity": 0.2, "accuracy": 0.7,
                         "drop": 0.24}],
        "adversarial": [{"attack": "fgsm", "epsilon": 2, "accuracy": 0.5, "drop": 0.44,
                         "transferred": False}]}))
    report = group_fairness([1, 1, 0, 0, 1, 1, 0, 0, 0], [1, 0, 0, 0, 1, 1, 1, 0, 0],
                            ["north"] * 4 + [EVIL] * 5, ["ants", "bees"], min_group_size=4)
    (run_dir / "fairness.json").write_text(json.dumps({
        "attribute": "site", "csv": "groups.csv", "n": 9, **report.to_dict(),
        "unmatched": {"rows": 2, "ambiguous_rows": 0, "images": 1, "rows_not_evaluated": 0,
                      "row_examples": [], "image_examples": []}}))


def test_every_trust_section_renders_its_file(fake_run: FakeRun) -> None:
    write_trust_files(fake_run.run_dir)
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert 'id="trust"' in page
    assert "https://" not in page and "<script" not in page.lower()

    calibration = section(page, "calibration")
    assert "1.700" in calibration and "12.0% → 3.1%" in calibration
    assert "0.612 → 0.418" in calibration and 'id="reliability"' in calibration

    ood = section(page, "ood")
    assert "mahalanobis" in ood and "41.2500" in ood and "95.0%" in ood
    assert re.search(r"<td>energy</td><td>88.0%</td><td>40.0%</td>", ood)

    grid = section(page, "explanations")
    assert grid.count("<figure") == 4
    assert grid.count('src="data:image/jpeg;base64,') == 3
    assert grid.count("prediction correct") == 2 and grid.count("prediction wrong") == 1
    assert "overlay not found" in grid and "prediction neutral" in grid
    assert EVIL not in grid and "&lt;b&gt;evil&lt;/b&gt;" in grid

    feature_map = section(page, "feature-map")
    assert 'id="feature-map"' in feature_map
    assert "20 of 20 validation images" in feature_map
    assert "1 misclassified" in feature_map

    robustness = section(page, "robustness")
    assert "94.0%" in robustness
    assert re.search(r"<td>gaussian_noise</td><td>0.2</td><td>70.0%</td><td>24.0 pp</td>",
                     robustness)
    assert re.search(r"<td>FGSM</td><td>2</td><td>50.0%</td><td>44.0 pp</td>", robustness)
    assert 'id="robustness-plot"' in robustness  # drawn from the JSON: no robustness.png

    fairness = section(page, "fairness")
    # north: selects bees 1/4, TPR 1/2, FPR 0; evil: selects bees 3/5, TPR 1, FPR 1/3.
    assert "35.0%" in fairness  # demographic parity difference 0.6 - 0.25
    assert re.search(r"<td>north</td><td>4</td><td>75.0%</td><td>25.0%</td><td>50.0%</td>"
                     r"<td>0.0%</td>", fairness)
    assert "&lt;b&gt;evil&lt;/b&gt;" in fairness and EVIL not in fairness
    assert "2 CSV rows matched no image" in fairness
    assert "Positive class" in fairness
    # bees, the positive class: TPR 1/2 vs 1 -> 50%, FPR 0 vs 1/3 -> 33.3%.
    assert re.search(r"TPR \(for bees\)</th><td>50.0%</td>", fairness)
    assert re.search(r"FPR \(for bees\)</th><td>33.3%</td>", fairness)


def test_absent_files_leave_a_hint_not_a_notice(fake_run: FakeRun) -> None:
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    hints = {"calibration": "vitkit calibrate", "ood": "--no-ood",
             "explanations": "explain_examples", "feature-map": "trust.feature_map",
             "robustness": "vitkit robustness", "fairness": "--groups"}
    for section_id, command in hints.items():
        body = section(page, section_id)
        assert 'class="absent"' in body and command in body, section_id
    assert 'id="missing-inputs"' not in page  # the fake run has every classic input


def test_broken_trust_files_are_reported(fake_run: FakeRun) -> None:
    write_trust_files(fake_run.run_dir)
    (fake_run.run_dir / "ood.json").write_text("{not json")
    (fake_run.run_dir / "fairness.json").write_text("[1, 2]")
    (fake_run.run_dir / "explanations" / "explanations.json").write_text('{"x": 1}')
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert "could not be read" in section(page, "ood")
    assert "should hold an object" in section(page, "fairness")
    assert "list of explanations" in section(page, "explanations")
    notice = page.split('id="missing-inputs"')[1].split("</aside>")[0]
    assert "ood.json" in notice and "fairness.json" in notice
    assert "1.700" in section(page, "calibration")  # the others still render


def test_feature_map_is_redrawn_from_json(fake_run: FakeRun) -> None:
    write_trust_files(fake_run.run_dir)
    (fake_run.run_dir / "feature_map.png").unlink()
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert re.search(r'<img id="feature-map" class="plot" src="data:image/png;base64,',
                     section(page, "feature-map"))


@pytest.mark.parametrize("name", TRUST_FILES)
def test_any_one_trust_file_alone(fake_run: FakeRun, name: str) -> None:
    write_trust_files(fake_run.run_dir)
    for other in TRUST_FILES:
        if other != name:
            (fake_run.run_dir / other).unlink()
    if name != "feature_map.json":  # the PNG alone would still show the map
        (fake_run.run_dir / "feature_map.png").unlink()
    page = write_report(fake_run.run_dir).read_text(encoding="utf-8")
    assert page.count('class="absent">No <code>') == 5


def test_cli_report_rerenders_with_trust(fake_run: FakeRun) -> None:
    write_trust_files(fake_run.run_dir)
    done = run_cli("report", fake_run.run_dir)
    assert done.returncode == 0, done.stderr
    page = (fake_run.run_dir / "report.html").read_text(encoding="utf-8")
    assert "12.0% → 3.1%" in section(page, "calibration")


@pytest.mark.browser
def test_trust_part_renders_in_chromium(fake_run: FakeRun, chromium_driver: Any) -> None:
    write_trust_files(fake_run.run_dir)
    chromium_driver.get(write_report(fake_run.run_dir).as_uri())
    images = chromium_driver.execute_script("""
        return Array.from(document.querySelectorAll('#trust ~ section.trust img')).map(
            img => ({id: img.id, ok: img.complete && img.naturalWidth > 0}));""")
    # reliability, 3 explanation overlays, feature map, robustness plot: all decoded.
    assert len(images) == 6 and all(img["ok"] for img in images)
    assert {"reliability", "feature-map", "robustness-plot"} <= {img["id"] for img in images}
    text = chromium_driver.execute_script(
        "return document.getElementById('fairness').innerText")
    assert EVIL in text  # shown as text, not parsed as markup
    wide = chromium_driver.execute_script(
        "return document.documentElement.scrollWidth > window.innerWidth")
    assert not wide
