"""`vitkit train --memory` then `vitkit train NEW --continue-from BUNDLE` end to end on tiny
data: the continued bundle predicts old + new classes in the old head's order, keeps a new
class-balanced memory, and reports old-class accuracy before/after beside naive fine-tuning;
its user errors exit 2 with a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import make_image_folder
from tests.e2e.cli import run_cli

from vitkit.bundle import read_meta

FAST = ["--epochs", "2", "--batch-size", "8", "--quiet"]


def _json(result) -> dict:  # noqa: ANN001
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_continue_a_bundle_with_new_classes(tmp_path: Path) -> None:
    quick = tmp_path / "quick.yaml"  # no trust steps: the continual figures are the subject
    quick.write_text("trust: {ood: false, calibrate: false, explain_examples: 0, "
                     "feature_map: false}\nnum_workers: 0\n")
    fast = [*FAST, "--config", quick]
    old_data = make_image_folder(tmp_path / "old", ("red", "green"), per_class=8)
    new_data = make_image_folder(tmp_path / "new", ("blue", "yellow"), per_class=8, seed=1)
    first = _json(run_cli("train", old_data, "--model", "test_resnet", "--weights", "none",
                          "--out", tmp_path / "first", "--memory", "6", "--json", *fast))
    memory = (read_meta(first["bundle"]).model_extra or {})["memory"]
    assert memory["images"] == 6 and memory["per_class"] == {"green": 3, "red": 3}

    continued = _json(run_cli("train", new_data, "--continue-from", first["bundle"],
                              "--out", tmp_path / "second", "--memory", "8", "--distill-old",
                              "--json", *fast))
    meta = read_meta(continued["bundle"])
    assert meta.labels == ["green", "red", "blue", "yellow"]  # the old head's order kept
    summary = continued["continual"]
    assert summary["old_classes"] == ["green", "red"]
    assert summary["new_classes"] == ["blue", "yellow"]
    assert summary["old_eval"].startswith("the old run's validation split")
    assert summary["memory"]["per_class"] == {"green": 2, "red": 2, "blue": 2, "yellow": 2}
    assert (meta.model_extra or {})["memory"]["images"] == 8
    for run in ("ours", "naive"):
        figures = summary["figures"][run]
        before, after = figures["old_accuracy_before"], figures["old_accuracy"]
        assert figures["backward_transfer"] == pytest.approx(after - before, abs=1e-4)
        assert figures["forgetting"] == pytest.approx(max(0.0, before - after), abs=1e-4)
        assert figures["average_accuracy"] == pytest.approx(
            (after + figures["new_accuracy"]) / 2, abs=1e-4)
    assert json.loads((tmp_path / "second" / "continual.json").read_text()) == summary
    written = json.loads((tmp_path / "second" / "summary.json").read_text())
    assert written["continual"] == summary and written["classes"] == meta.labels
    report = (tmp_path / "second" / "report.html").read_text()
    assert 'id="continual-table"' in report and "naive fine-tuning" in report

    predicted = _json(run_cli("predict", continued["bundle"], new_data / "blue", "--json",
                              "--quiet"))
    assert {p["label"] for p in predicted} <= set(meta.labels)

    # a bundle without a memory and no old data: nothing to rehearse with
    bare = _json(run_cli("train", old_data, "--model", "test_resnet", "--weights", "none",
                         "--out", tmp_path / "bare", "--json", *fast))
    refused = run_cli("train", new_data, "--continue-from", bare["bundle"], "--out",
                      tmp_path / "third", *fast)
    assert refused.returncode == 2 and "--old-data" in " ".join(refused.stderr.split())
    stray = run_cli("train", new_data, "--replay-ratio", "0.5", "--out", tmp_path / "4", *fast)
    assert stray.returncode == 2 and "--continue-from" in " ".join(stray.stderr.split())
