"""`vitkit anomaly fit | score | eval` as a user runs them, in subprocesses, offline.

The data is the issue's scenario at a small size: dark noisy canvases, defects of a few pixels
with their masks, laid out MVTec-style.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.anomaly.canvas import normal_canvas, with_dot, with_line
from tests.e2e.test_cli_train import json_out, ok, run_cli

pytestmark = pytest.mark.slow

SIZE = (320, 240)  # PIL (width, height): small canvases keep the CLI runs quick


def _mvtec(root: Path, n_train: int = 40, n_good: int = 6, n_defect: int = 4) -> Path:
    seed = iter(range(10_000))
    for i in range(n_train):
        _save(normal_canvas(next(seed), SIZE), root / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        _save(normal_canvas(next(seed), SIZE), root / "test" / "good" / f"{i:03d}.png")
    for defect, paste in (("dot", with_dot), ("line", with_line)):
        for i in range(n_defect):
            image, mask = paste(normal_canvas(next(seed), SIZE), next(seed))
            _save(image, root / "test" / defect / f"{i:03d}.png")
            mask_image = Image.fromarray(mask.astype(np.uint8) * 255)
            _save(mask_image, root / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _mvtec(tmp_path_factory.mktemp("canvas-mvtec"))
    (root / "train" / "good" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.fixture(scope="module")
def fitted(mvtec: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    bundle = tmp_path_factory.mktemp("anomaly-bundle") / "bundle"
    # Half the normals held out: with a handful, a 99th percentile is just their maximum.
    result = json_out(run_cli("anomaly", "fit", mvtec, "--method", "patchmean", "--out", bundle,
                              "--holdout", 0.5, "--json", "--quiet"))
    return bundle, result


def test_fit_writes_a_bundle_and_reports_skipped_images(fitted: tuple[Path, dict]) -> None:
    bundle, result = fitted
    assert result["method"] == "patchmean"
    assert result["n_fit"] + result["n_holdout"] == 40, "train/good of the MVTec root is used"
    assert result["n_holdout"] == 20
    assert result["n_skipped"] == 1
    assert sorted(p.name for p in bundle.iterdir()) == ["anomaly.safetensors", "skipped.csv",
                                                        "vitkit.json"]
    meta = json.loads((bundle / "vitkit.json").read_text())
    assert meta["task"] == "anomaly"
    assert meta["anomaly"]["threshold"] == pytest.approx(result["threshold"])
    assert meta["anomaly"]["fit"]["n_holdout"] == 20
    assert "broken.png" in (bundle / "skipped.csv").read_text()


def test_score_prints_labels_and_writes_overlays(fitted: tuple[Path, dict], mvtec: Path,
                                                 tmp_path: Path) -> None:
    bundle, _ = fitted
    maps = tmp_path / "maps"
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    results = json_out(run_cli("anomaly", "score", bundle, mvtec / "test" / "dot",
                               str(mvtec / "test" / "good" / "*.png"), bad, tmp_path / "nowhere",
                               "--json", "--maps", maps, "--quiet"))
    scored = [r for r in results if "score" in r]
    errors = {Path(r["path"]).name: r["error"] for r in results if "error" in r}
    assert set(errors) == {"bad.jpg", "nowhere"}
    assert len(scored) == 4 + 6
    for r in scored:
        assert {"path", "score", "label"} <= r.keys()
        assert 0.0 <= r["score"] <= 1.0
        assert r["label"] == ("anomaly" if r["score"] >= 0.5 else "normal")
    dots = [r for r in scored if "/dot/" in r["path"]]
    assert all(r["label"] == "anomaly" for r in dots), dots
    goods = [r for r in scored if "/good/" in r["path"]]
    assert sum(r["label"] == "anomaly" for r in goods) <= 1
    pngs = sorted(p.name for p in maps.iterdir())
    assert len(pngs) == 10, "one overlay per scored image; stems collide, so names are unique"
    with Image.open(maps / pngs[0]) as overlay:
        assert overlay.size == SIZE


def test_eval_prints_the_contract_and_writes_a_report(fitted: tuple[Path, dict], mvtec: Path,
                                                      tmp_path: Path) -> None:
    bundle, _ = fitted
    out = tmp_path / "eval"
    result = json_out(run_cli("anomaly", "eval", bundle, mvtec, "--out", out, "--json",
                              "--quiet"))
    assert {"image_auroc", "image_ap", "f1", "pixel_auroc", "pro", "per_defect", "threshold",
            "n_normal", "n_anomalous"} <= result.keys()
    assert result["n_normal"] == 6 and result["n_anomalous"] == 8
    assert set(result["per_defect"]) == {"dot", "line"}
    assert result["image_auroc"] >= 0.95
    assert result["pixel_auroc"] >= 0.9
    assert (out / "eval.json").is_file()
    page = (out / "report.html").read_text()
    assert 'id="gallery-section"' in page and 'id="metric-image-auroc"' in page
    # worst images first: the first figure is an anomalous one
    first = page.index('<figure class="prediction')
    assert "type</span> good" not in page[first:page.index("</figure>", first)]


def test_eval_f1_threshold_is_stored_in_the_bundle(mvtec: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    ok(run_cli("anomaly", "fit", mvtec, "--method", "patchmean", "--out", bundle, "--quiet"))
    before = json.loads((bundle / "vitkit.json").read_text())["anomaly"]["threshold"]
    result = json_out(run_cli("anomaly", "eval", bundle, mvtec, "--threshold", "f1", "--json",
                              "--quiet"))
    record = json.loads((bundle / "vitkit.json").read_text())["anomaly"]
    assert record["threshold"] == pytest.approx(result["threshold"])
    assert record["threshold"] != pytest.approx(before)
    assert record["threshold_source"].startswith("F1-optimal")
    assert result["f1"] == pytest.approx(1.0)


def test_user_errors_exit_2_with_a_message(tmp_path: Path, mvtec: Path) -> None:
    few = tmp_path / "few"
    _save(normal_canvas(0, SIZE), few / "0.png")
    result = run_cli("anomaly", "fit", few, "--method", "patchmean", "--out", tmp_path / "x")
    assert result.returncode == 2
    assert "at least 2 usable normal images" in result.stderr
    assert "found 1" in result.stderr
    assert "Traceback" not in result.stderr

    result = run_cli("anomaly", "score", tmp_path / "not-a-bundle", mvtec)
    assert result.returncode == 2 and "not a vitkit bundle" in result.stderr

    result = run_cli("anomaly", "fit", mvtec, "--method", "isolation-forest")
    assert result.returncode == 2 and "method" in result.stderr

    result = run_cli("anomaly", "eval", tmp_path / "nope", tmp_path)
    assert result.returncode == 2
