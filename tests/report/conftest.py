"""Shared fixtures for report tests: a fake run directory and a headless Chromium driver."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tests.requirements import require

from vitkit.evaluate import classification_metrics

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
EVIL_LABEL = "<script>alert('x')</script>"
LABELS = ["cat", "dog", EVIL_LABEL]


@dataclass
class FakeRun:
    """A run directory with every report input, and what the report should show."""

    run_dir: Path
    evil_label: str
    accuracy_text: str
    n_predictions: int
    n_readable_images: int
    n_wrong: int


@pytest.fixture
def fake_run(tmp_path: Path) -> FakeRun:
    """A run directory with summary, eval, metrics (2 stages), predictions, skipped files."""
    run_dir = tmp_path / "run"
    images = run_dir / "images"
    images.mkdir(parents=True)

    # Real images in several formats and modes; one prediction points at a missing file.
    specs: list[tuple[str, str, tuple[int, int], Any]] = [
        ("cat_1.jpg", "RGB", (240, 180), (200, 120, 60)),
        ("cat_2.png", "RGBA", (120, 200), (180, 90, 40, 200)),
        ("dog_1.jpg", "L", (300, 300), 90),
        ("dog_2.jpg", "RGB", (64, 48), (30, 60, 160)),
        ("evil_1.png", "P", (100, 100), 3),
        ("evil_2.jpg", "RGB", (500, 200), (20, 140, 80)),
    ]
    for name, mode, size, color in specs:
        Image.new(mode, size, color).save(images / name)
    (images / "broken.jpg").write_bytes(b"not an image at all")
    predictions = [
        {"path": str(images / "cat_1.jpg"), "true": "cat", "pred": "cat", "score": 0.91},
        {"path": "images/cat_2.png", "true": "cat", "pred": "dog", "score": 0.55},
        {"path": str(images / "dog_1.jpg"), "true": "dog", "pred": "dog", "score": 0.88},
        {"path": str(images / "dog_2.jpg"), "true": "dog", "pred": EVIL_LABEL, "score": 0.61},
        {"path": str(images / "evil_1.png"), "true": EVIL_LABEL, "pred": EVIL_LABEL, "score": 0.97},
        {"path": str(images / "evil_2.jpg"), "true": EVIL_LABEL, "pred": "cat", "score": 0.72},
        {"path": str(images / "does_not_exist.jpg"), "true": "cat", "pred": "cat", "score": 0.8},
        {"path": str(images / "broken.jpg"), "true": "dog", "pred": "dog", "score": 0.7},
    ]
    (run_dir / "predictions.json").write_text(json.dumps(predictions), encoding="utf-8")

    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.6, 0.3, 0.1],
            [0.3, 0.6, 0.1],
            [0.1, 0.8, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.3, 0.6],
            [0.1, 0.1, 0.8],
            [0.2, 0.1, 0.7],
            [0.1, 0.2, 0.7],
            [0.5, 0.3, 0.2],
        ]
    )
    metrics = classification_metrics(y, probs, LABELS, top_k=(1, 2))
    (run_dir / "eval.json").write_text(
        json.dumps({**metrics.to_dict(), "split": "val"}), encoding="utf-8"
    )
    summary = {
        "model": "vit_small_patch16_224",
        "data": str(tmp_path / "data"),
        "bundle": str(tmp_path / "model.vitkit"),
        "val_accuracy": metrics.accuracy,
        "epochs_run": 5,
        "best_epoch": 4,
        "skipped": 2,
        "train_images": 1234,
        "val_images": 10,
        "classes": LABELS,
        "seconds": 754.2,
        "created": "2024-05-01T14:03:00+00:00",
        "some_future_key": [1, 2, 3],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")

    columns = [
        "epoch",
        "stage",
        "lr",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "images_per_s",
        "seconds",
    ]
    rows = [
        [1, "head", 1e-3, 1.10, 0.45, 1.00, 0.50, 812.5, 12.1],
        [2, "head", 1e-3, 0.90, 0.60, 0.85, 0.60, 820.1, 11.9],
        [3, "full", 1e-4, 0.70, 0.70, 0.75, "", 410.0, 24.3],
        [4, "full", 1e-4, 0.55, 0.78, 0.70, 0.70, 415.2, 24.0],
        [5, "full", 5e-5, 0.50, 0.80, 0.72, 0.68, 414.9, 23.8],
    ]
    with (run_dir / "metrics.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    with (run_dir / "skipped.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerow(["data/cat/corrupt.jpg", "cannot identify image file"])
        writer.writerow(["data/dog/<tiny>.png", "image is 3x3 pixels, smaller than 16x16"])

    return FakeRun(
        run_dir=run_dir,
        evil_label=EVIL_LABEL,
        accuracy_text=f"{metrics.accuracy * 100:.1f}%",
        n_predictions=len(predictions),
        n_readable_images=len(specs),
        n_wrong=sum(p["true"] != p["pred"] for p in predictions),
    )


@pytest.fixture(scope="session")
def chromium_driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A headless Chromium WebDriver using the system browser and driver (never downloads).

    Skips the test when Chromium, its driver or selenium is not installed; fails it instead
    where ``VITKIT_REQUIRE`` names chromium (CI).
    """
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require("chromium", "selenium is not installed (pip install -e '.[dev]')")

    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            require(
                "chromium",
                f"{path} not found; install headless Chromium with "
                "`apt-get install chromium chromium-driver` (Debian/Ubuntu)",
            )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    # An explicit driver path makes Selenium skip Selenium Manager (no network, no download).
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
