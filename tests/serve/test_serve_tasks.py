"""Segmentation and detection bundles behind the real service (uvicorn on a loopback port):
v1 answers with a label, a score and the task's own keys, the picture on ?maps=1, the same
answer over the KServe v2 protocol, and the request log keeps each answer."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tests.detect.conftest import detect_bundle  # noqa: F401 - the fixture
from tests.segment.conftest import random_bundle  # noqa: F401 - the fixture
from tests.serve.test_serve_http import wait_ready

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from vitkit.serve.config import ServeConfig  # noqa: E402
from vitkit.serve.server import BackgroundServer  # noqa: E402


def _png(seed: int, size: tuple[int, int] = (80, 60)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def task_server(random_bundle: Path, detect_bundle: Path,  # noqa: F811
                tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("serve-tasks")
    config = ServeConfig.model_validate({
        "models": [{"name": "seg", "bundle": str(random_bundle)},
                   {"name": "det", "bundle": str(detect_bundle)}],
        "routes": {"default": [{"model": "seg"}], "boxes": [{"model": "det"}]},
        "log": {"url": f"sqlite:///{folder / 'log.db'}", "flush_ms": 20},
        "state_file": str(folder / "state.json"),
    })
    with BackgroundServer(config) as url:
        wait_ready(url, timeout=120)
        yield url, folder / "log.db"


def test_a_segmenter_answers_with_classes_and_a_mask_picture(task_server: Any) -> None:
    url, _ = task_server
    response = httpx.post(f"{url}/v1/predict?maps=1", timeout=60,
                          files=[("files", ("a.png", _png(1), "image/png"))])
    assert response.status_code == 200, response.text
    (answer,) = response.json()["predictions"]
    assert answer["kind"] == "segment" and answer["model"] == "seg"
    assert answer["label"] in {"background", "square", "ring"}
    assert 0.0 <= answer["score"] <= 1.0
    assert sum(answer["classes"].values()) == pytest.approx(1.0, abs=1e-3)
    picture = Image.open(io.BytesIO(base64.b64decode(answer["mask_png"])))
    assert picture.size == (80, 60)  # at the image's own size
    assert not any(key.startswith("_") for key in answer)


def test_a_detector_answers_with_boxes_inside_the_image(task_server: Any) -> None:
    url, _ = task_server
    response = httpx.post(f"{url}/v1/predict?route=boxes&maps=1", timeout=60,
                          files=[("files", ("b.png", _png(2), "image/png"))])
    assert response.status_code == 200, response.text
    (answer,) = response.json()["predictions"]
    assert answer["kind"] == "detect"
    for box in answer["boxes"]:
        x1, y1, x2, y2 = box["box"]
        assert 0 <= x1 <= x2 <= 80 and 0 <= y1 <= y2 <= 60
        assert box["label"] in {"a", "b"}
    top = max((b["score"] for b in answer["boxes"]), default=0.0)
    assert answer["score"] == pytest.approx(top, abs=1e-3)
    assert Image.open(io.BytesIO(base64.b64decode(answer["boxes_png"]))).size == (80, 60)


def test_v2_returns_the_tasks_outputs_and_the_log_keeps_every_answer(task_server: Any) -> None:
    url, log = task_server
    image = base64.b64encode(_png(3)).decode("ascii")
    for name, key in (("seg", "classes"), ("det", "boxes")):
        metadata = httpx.get(f"{url}/v2/models/{name}", timeout=30).json()
        assert key in {o["name"] for o in metadata["outputs"]}
        response = httpx.post(f"{url}/v2/models/{name}/infer", timeout=60, json={
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}]})
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
        assert isinstance(json.loads(outputs[key][0]), (dict, list))
        assert 0.0 <= outputs["score"][0] <= 1.0
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(log) as db:
            models = {row[0] for row in db.execute("SELECT model FROM predictions")}
        if {"seg", "det"} <= models or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {"seg", "det"} <= models


def test_the_web_page_shows_a_mask_and_boxes(task_server: Any, chromium_driver: Any,
                                             tmp_path: Path) -> None:
    """The page by the answer's kind: a segmenter's class shares and mask picture, then (on
    /?route=boxes) a detector's box list and drawn boxes."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = task_server
    image = tmp_path / "c.png"
    image.write_bytes(_png(3))
    expected = {route: httpx.post(f"{url}/v1/predict?route={route}", timeout=60,
                                  files=[("files", ("c.png", _png(3), "image/png"))]
                                  ).json()["predictions"][0] for route in ("default", "boxes")}
    for page, route in (("/", "default"), ("/?route=boxes", "boxes")):
        chromium_driver.get(url + page)
        chromium_driver.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(chromium_driver, 30).until(
            lambda d: d.find_element(By.ID, "who").text.strip() != "")
        assert chromium_driver.find_element(By.ID, "error").text == ""
        picture = chromium_driver.find_element(By.ID, "map")
        assert picture.is_displayed()
        assert picture.get_attribute("src").startswith("data:image/png;base64,")
        answer = expected[route]
        if route == "default":
            assert "model seg" in chromium_driver.find_element(By.ID, "who").text
            assert "mask" in picture.get_attribute("alt")
            bars = chromium_driver.find_elements(By.CSS_SELECTOR, "#bars .topk")
            assert len(bars) == len(answer["classes"])
        else:
            assert "model det" in chromium_driver.find_element(By.ID, "who").text
            assert "boxes" in picture.get_attribute("alt")
            listed = chromium_driver.find_elements(By.CSS_SELECTOR, "#boxes li")
            assert len(listed) == len(answer["boxes"])
            assert f"{len(answer['boxes'])} boxes" in chromium_driver.find_element(
                By.ID, "why").text
