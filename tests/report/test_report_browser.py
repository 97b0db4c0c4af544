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
