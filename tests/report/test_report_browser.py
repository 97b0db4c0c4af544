"""The report as a real browser renders it (headless Chromium)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from vitkit.report import write_report

if TYPE_CHECKING:
    from conftest import FakeRun

IMAGES_JS = """
return Array.from(document.images).map(
    img => ({id: img.id, complete: img.complete, width: img.naturalWidth}));
"""


@pytest.mark.browser
def test_report_renders_in_chromium(fake_run: FakeRun, chromium_driver: Any) -> None:
    page = write_report(fake_run.run_dir)
    chromium_driver.get(page.as_uri())
    driver = chromium_driver
    assert driver.execute_script("return document.readyState") == "complete"

    images = driver.execute_script(IMAGES_JS)
    # 2 plots + one thumbnail per readable image; every one really decoded.
    assert len(images) == 2 + fake_run.n_readable_images
    broken = [img for img in images if not (img["complete"] and img["width"] > 0)]
    assert not broken, f"images not decoded: {broken}"
    assert {"learning-curves", "confusion-matrix"} <= {img["id"] for img in images}

    accuracy = driver.execute_script(
        "return document.getElementById('metric-accuracy').textContent.trim()"
    )
    assert accuracy == fake_run.accuracy_text
    figures = driver.execute_script(
        "return document.querySelectorAll('#predictions > figure.prediction').length"
    )
    assert figures == fake_run.n_predictions
    # The escaped label is shown as text, never executed or parsed as markup.
    assert driver.execute_script("return document.scripts.length") == 0
    assert fake_run.evil_label in driver.execute_script("return document.body.innerText")


CARD_LINES_JS = """
return Array.from(document.querySelectorAll('#gallery-section .k')).map(k => {
    const line = parseFloat(getComputedStyle(k).lineHeight);
    return {text: k.textContent, height: k.getBoundingClientRect().height, line: line};
});
"""


def _anomaly_rows(n_per_kind: int) -> list[dict[str, Any]]:
    import io

    from PIL import Image

    def png(colour: tuple[int, int, int]) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (256, 256), colour).save(buffer, format="PNG")
        return buffer.getvalue()

    rows = []
    kinds = [("good", "normal", 0.2), ("good", "anomaly", 0.7), ("scratch", "anomaly", 0.9),
             ("scratch", "normal", 0.3)]
    for defect, label, score in kinds:
        for i in range(n_per_kind):
            rows.append({"path": f"/data/test/{defect}/{label}_{i:03d}.png", "defect": defect,
                         "label": label, "score": score + i / 1000, "raw_score": score,
                         "overlay_png": png((40 * i % 255, 90, 160))})
    return rows


@pytest.mark.browser
@pytest.mark.parametrize("width", [375, 1280])
def test_anomaly_report_cards_read_at_phone_and_desktop_width(tmp_path, chromium_driver: Any,
                                                              width: int) -> None:
    from vitkit.report.anomaly import CARDS_PER_GROUP, write_anomaly_report

    rows = _anomaly_rows(30)  # 120 images: the page shows a few cards of each kind
    evaluation = {"image_auroc": 0.9, "image_ap": 0.9, "f1": 0.8, "threshold": 1.0,
                  "n_normal": 60, "n_anomalous": 60, "data": "/data", "per_defect": {}}
    page = write_anomaly_report(tmp_path, evaluation, rows)
    assert page.stat().st_size < 400_000, "JPEG thumbnails, a few cards per kind"
    chromium_driver.set_window_size(width, 900)
    chromium_driver.get(page.as_uri())
    counts = chromium_driver.execute_script(
        "return ['missed', 'false-alarms', 'detected'].map("
        "k => document.querySelectorAll('#gallery-' + k + ' figure').length)")
    assert counts == [CARDS_PER_GROUP] * 3, "missed defects and false alarms come first"
    labels = chromium_driver.execute_script(CARD_LINES_JS)
    assert labels and all(k["height"] <= 1.5 * k["line"] for k in labels), \
        f"a label wrapped ('scor / e'): {labels[:3]}"
    overflow = chromium_driver.execute_script(
        "return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, "no horizontal scrolling"
