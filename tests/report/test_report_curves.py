"""The report's Learning curve section: from summary.json, from metrics.csv alone (an
interrupted run), and the transfer gain of --compare-scratch."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from vitkit.report import write_report

COLUMNS = ["epoch", "stage", "train_loss", "val_loss", "val_acc", "image_size"]
# gaps: head 0.1; full 0.1, 0.2 (+100 %: onset at epoch 3); best 0.9 at epoch 3, last 0.8
EPOCHS = [[1, "head", 0.9, 1.0, 0.6, 224], [2, "full", 0.7, 0.8, 0.86, 128],
          [3, "full", 0.5, 0.7, 0.9, 176], [4, "full", 0.4, 0.7, 0.8, 224]]


def _run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with (run_dir / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(EPOCHS)
    return run_dir


def _section(page: str) -> str:
    found = re.search(r'<section class="card" id="learning-curve">(.*?)</section>', page, re.S)
    assert found, "no learning-curve section"
    return found.group(1)


def test_an_interrupted_run_gets_its_diagnostics_from_metrics_csv(tmp_path: Path) -> None:
    page = write_report(_run(tmp_path)).read_text()
    section = _section(page)
    assert "Convergence epoch</th><td>epoch 2</td>" in section  # 0.86 >= 0.95 * 0.9
    assert "Overfitting onset</th><td>epoch 3</td>" in section
    assert "Best minus last</th><td>10.0 points</td>" in section
    assert "scratch" not in section
    assert "Size (px)" in page, "the epoch table shows progressive resizing's sizes"


def test_the_summary_and_the_scratch_comparison_are_shown(tmp_path: Path) -> None:
    run_dir = _run(tmp_path)
    summary = {
        "model": "m", "val_accuracy": 0.9, "attention": "sdpa", "progressive": "128:224",
        "grad_checkpointing": True,
        "learning_curve": {"epochs": 4, "best_val_accuracy": 0.9, "last_val_accuracy": 0.8,
                           "convergence_epoch": 2, "overfitting_onset": None,
                           "best_minus_last": 0.1},
        "transfer": {"pretrained_accuracy": 0.9, "scratch_accuracy": 0.6, "gain": 0.75,
                     "scratch_run": str(run_dir / "scratch")},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    page = write_report(run_dir).read_text()
    section = _section(page)
    assert "Overfitting onset</th><td>none seen</td>" in section  # the summary's, not the CSV's
    assert "Transfer gain</th><td>0.750</td>" in section
    assert "From scratch</th><td>60.0%</td>" in section
    assert 'href="scratch/report.html"' in section
    for row in ("Attention</th><td>sdpa", "Progressive resizing</th><td>128:224",
                "Gradient checkpointing</th><td>on"):
        assert row in page
