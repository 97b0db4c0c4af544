"""The `vitkit segment eval` HTML report: per-class table equal to the eval record, the
gallery of worst and best images (prediction beside truth), the skipped pairs; the CLI writes
it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.e2e.cli import run_cli
from tests.report.html_parts import parse
from tests.segment.squares import make_squares

from vitkit.bundle import save_bundle
from vitkit.data.masks import BINARY_CLASSES
from vitkit.report import _format as fmt
from vitkit.report.segment import gallery_picks
from vitkit.segment.metrics import image_scores
from vitkit.segment.model import build_segmenter, bundle_meta

N_IMAGES = 4


@pytest.fixture(scope="module")
def binary_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model, record = build_segmenter("unet", "tu-efficientnet_lite0", 2, 64, weights="none")
    return save_bundle(tmp_path_factory.mktemp("segment-report") / "bundle", model,
                       bundle_meta(record, list(BINARY_CLASSES), (0.485, 0.456, 0.406),
                                   (0.229, 0.224, 0.225)))


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = make_squares(tmp_path_factory.mktemp("squares"), n=N_IMAGES)
    (data / "images" / "zz_broken.png").write_bytes(b"not a png")
    (data / "masks" / "zz_broken.png").write_bytes(b"not a png")
    return data


def test_image_scores() -> None:
    truth = np.zeros((4, 4), dtype=np.int64)
    truth[:2, :2] = 1
    assert image_scores(truth, truth, 2) == (1.0, 1.0, [0, 1])
    shifted = np.zeros_like(truth)
    shifted[2:, 2:] = 1
    assert image_scores(shifted, truth, 2)[:2] == (0.0, 0.0)
    half = truth.copy()
    half[1, :2] = 0  # 2 of the 4 true pixels found
    assert image_scores(half, truth, 2)[:2] == (pytest.approx(2 / 3, abs=1e-6), 0.5)
    empty = np.zeros_like(truth)
    assert image_scores(empty, empty, 2) == (None, None, [0])
    ignored = truth.copy()
    ignored[0, 0] = 255
    assert image_scores(truth, ignored, 2)[:2] == (1.0, 1.0)  # the ignored pixel not counted


def test_gallery_picks() -> None:
    rows = [{"path": f"{i}.png", "dice": d} for i, d in enumerate([0.9, 0.1, None, 0.5, 0.7])]
    worst, best = gallery_picks(rows, size=2)
    assert [r["path"] for r in worst] == ["1.png", "3.png"]
    assert [r["path"] for r in best] == ["0.png", "4.png"]
    worst, best = gallery_picks(rows, size=8)
    assert len(worst) == 4 and best == []


@pytest.fixture(scope="module")
def evaluated(binary_bundle: Path, squares: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[dict, Path, str]:
    """`vitkit segment eval BUNDLE DATA --out OUT --json`: its record, OUT, its stderr."""
    out = tmp_path_factory.mktemp("segment-eval") / "out"
    result = run_cli("segment", "eval", binary_bundle, squares, "--out", out, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout), out, result.stderr


def test_the_cli_writes_the_report(evaluated: tuple[dict, Path, str]) -> None:
    record, out, stderr = evaluated
    assert set(record) == {"dice", "iou", "pixel_accuracy", "per_class", "pixels", "n_images",
                           "split", "variant", "n_skipped", "skipped"}  # the keys it had
    assert (out / "report.html").is_file() and "report.html" in stderr
    saved = json.loads((out / "eval.json").read_text())
    assert {k: saved[k] for k in record} == record


def test_the_report_shows_the_record(evaluated: tuple[dict, Path, str]) -> None:
    record, out, _ = evaluated
    assert record["n_images"] == N_IMAGES and record["n_skipped"] == 1
    text = (out / "report.html").read_text()
    page = parse(text)
    rows = page.tables["per-class"]
    assert [row[0].split(" (")[0] for row in rows] == list(BINARY_CLASSES)
    for row, (name, m) in zip(rows, record["per_class"].items(), strict=True):
        assert row[1:4] == [fmt.decimal(m["dice"], 4), fmt.decimal(m["iou"], 4),
                            fmt.integer(m["pixels"])], name
        assert row[4] == str(N_IMAGES)  # every square image holds both classes
    assert f">{fmt.decimal(record['dice'], 4)}<" in text and "id=\"metric-dice\"" in text
    shown = page.images.get("gallery-worst", []) + page.images.get("gallery-best", [])
    assert len(shown) == 2 * N_IMAGES  # prediction and truth per image (fewer than the cap)
    assert all(img["src"].startswith("data:image/png;base64,") for img in shown)
    assert len(page.tables["all-images"]) == N_IMAGES
    assert "zz_broken.png" in page.tables["skipped"][0][0]
    assert "http://" not in text and "https://" not in text  # self-contained
