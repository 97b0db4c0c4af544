"""The `vitkit detect eval` HTML report: AP per class equal to the eval record, the PR curve,
the gallery with predicted and true boxes, what was left out; the CLI writes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.detect.conftest import write_detect_bundle
from tests.detect.synthetic import make_squares
from tests.e2e.cli import run_cli
from tests.report.html_parts import parse

from vitkit.detect.metrics import image_matches
from vitkit.report import _format as fmt
from vitkit.report.detect import gallery_picks, write_detect_report

N_IMAGES = 3


def test_image_matches() -> None:
    truth = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]),
             "labels": torch.tensor([0, 1])}
    prediction = {"boxes": torch.tensor([[1.0, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30],
                                         [50, 50, 60, 60]]),
                  "scores": torch.tensor([0.9, 0.8, 0.7, 0.1]),
                  "labels": torch.tensor([0, 0, 0, 1])}
    counts = image_matches(prediction, truth, score_threshold=0.5)
    # one match; the second box on the same object and the wrong-class box are false
    assert counts == {"truth": 2, "predicted": 3, "matched": 1, "missed": 1, "false": 2}
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}
    assert image_matches(empty, truth, 0.5)["missed"] == 2


def test_gallery_picks_and_a_page_without_curves(tmp_path: Path) -> None:
    rows = [{"path": "a.png", "missed": 0, "false": 0, "matched": 2},
            {"path": "b.png", "missed": 2, "false": 1, "matched": 0},
            {"path": "c.png", "missed": 0, "false": 1, "matched": 1},
            {"path": "d.png", "missed": 0, "false": 0, "matched": 0}]
    worst, best = gallery_picks(rows)
    assert [r["path"] for r in worst] == ["b.png", "c.png"]
    assert [r["path"] for r in best] == ["a.png"]
    record = {"map_50": 0.0, "map_50_95": 0.0, "per_class": {"a": {"ap_50": None,
                                                                   "ap_50_95": None}},
              "pr_curves": {}, "n_images": 0, "skipped": 1, "dropped_boxes": 1}
    path = write_detect_report(tmp_path, record, skipped=[{"path": "x.png", "reason": "bad"}],
                               dropped=[{"path": "x.txt", "where": "line 2",
                                         "reason": "unknown class (7)"}])
    page = parse(path.read_text())
    assert page.tables["per-class"] == [["a", fmt.MISSING, fmt.MISSING]]
    assert "pr-curves" not in page.ids
    assert page.tables["skipped"] == [["x.png", "bad"]]
    assert page.tables["dropped"] == [["x.txt", "line 2", "unknown class (7)"]]


@pytest.fixture(scope="module")
def detect_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight 64 px FCOS bundle that keeps boxes above 0.05."""
    return write_detect_bundle(tmp_path_factory.mktemp("detect") / "bundle", 0.05)


@pytest.fixture(scope="module")
def evaluated(detect_bundle: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[dict, Path, str]:
    """`vitkit detect eval BUNDLE DATA --out OUT --json` on 3 images with a dropped box."""
    root = tmp_path_factory.mktemp("detect-eval")
    data = make_squares(root / "squares", n_train=1, n_val=N_IMAGES - 1, size=64)
    (data / "data.yaml").write_text("names: [a, b]\n")  # the random bundle's classes
    label = data / "labels" / "val" / "sq_1.txt"
    label.write_text(label.read_text() + "7 0.5 0.5 0.2 0.2\n")  # no class 7: dropped
    out = root / "out"
    result = run_cli("detect", "eval", detect_bundle, data, "--out", out, "--json",
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout), out, result.stderr


def test_the_cli_writes_the_report(evaluated: tuple[dict, Path, str]) -> None:
    record, out, stderr = evaluated
    assert set(record) == {"bundle", "data", "split", "variant", "map_50", "map_50_95",
                           "per_class", "n_images", "skipped", "dropped_boxes", "pr_curves",
                           "eval_file"}  # the keys it had
    assert (out / "report.html").is_file() and "report.html" in stderr


def test_the_report_shows_the_record(evaluated: tuple[dict, Path, str]) -> None:
    record, out, _ = evaluated
    assert record["n_images"] == N_IMAGES and record["dropped_boxes"] == 1
    text = (out / "report.html").read_text()
    page = parse(text)
    rows = page.tables["per-class"]
    assert rows == [[name, fmt.decimal(m["ap_50"], 4), fmt.decimal(m["ap_50_95"], 4)]
                    for name, m in record["per_class"].items()]
    assert f">{fmt.decimal(record['map_50'], 4)}<" in text
    curve = page.images["pr-curves"]
    assert len(curve) == 1 and curve[0]["src"].startswith("data:image/png;base64,")
    shown = page.images.get("gallery-worst", []) + page.images.get("gallery-best", [])
    assert 1 <= len(shown) <= N_IMAGES
    assert all(img["src"].startswith("data:image/png;base64,") for img in shown)
    assert "unknown class" in page.tables["dropped"][0][2]
    assert "http://" not in text and "https://" not in text  # self-contained
