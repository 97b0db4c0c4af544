"""The v2 inference protocol, anomaly bundles with heat maps, and the web page in Chromium."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from tests.anomaly.canvas import normal_canvas, with_dot  # noqa: E402
from tests.serve.test_serve_http import config, png_bytes, predict, wait_ready  # noqa: E402

from vitkit.serve.server import BackgroundServer  # noqa: E402


@pytest.fixture(scope="module")
def anomaly_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitkit.anomaly.config import AnomalyFitConfig
    from vitkit.workflows.anomaly import run_fit

    root = tmp_path_factory.mktemp("served-anomaly")
    (root / "normal").mkdir()
    for i in range(16):
        normal_canvas(i, (160, 120)).save(root / "normal" / f"{i:02d}.png")
    bundle = root / "bundle"
    run_fit(AnomalyFitConfig(data=str(root / "normal"), method="patchmean", out=str(bundle),
                             holdout=0.5), progress=False)
    return bundle


@pytest.fixture(scope="module")
def mixed_server(trained_bundles: dict[str, Path], anomaly_bundle: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("mixed")
    bundles = {"a": Path(shutil.copytree(trained_bundles["cnn"], root / "a")),
               "defects": anomaly_bundle}
    cfg = config(bundles, root, routes={"default": [{"model": "a"}],
                                        "inspect": [{"model": "defects"}]}, fallback=[])
    background = BackgroundServer(cfg)
    with background as url:
        wait_ready(url)
        yield url, background.service


def test_v2_protocol_matches_v1(mixed_server: Any, tiny_image_folder: Path) -> None:
    url, service = mixed_server
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{url}/v2/models/a").json()
    assert meta["name"] == "a" and meta["versions"] == [service.models["a"].version]
    assert meta["inputs"][0]["shape"][1:] == [3, *service.models["a"].input_size]
    paths = sorted((tiny_image_folder / "blue").iterdir())[:2]
    raw = [p.read_bytes() for p in paths]
    v1 = predict(url, raw).json()["predictions"]
    as_bytes = httpx.post(f"{url}/v2/models/a/infer", json={"id": "r1", "inputs": [{
        "name": "image", "datatype": "BYTES", "shape": [2],
        "data": [base64.b64encode(b).decode() for b in raw]}]}).json()
    assert as_bytes["id"] == "r1" and as_bytes["model_name"] == "a"
    outputs = {o["name"]: o for o in as_bytes["outputs"]}
    assert outputs["label"]["data"] == [p["label"] for p in v1]
    assert outputs["score"]["data"] == pytest.approx([p["score"] for p in v1], abs=1e-5)
    model = service.models["a"]
    tensors = [model.prepare(Image.open(io.BytesIO(b)).convert("RGB")) for b in raw]
    flat = [float(v) for t in tensors for v in t.flatten().tolist()]
    as_tensor = httpx.post(f"{url}/v2/models/a/infer", json={"inputs": [{
        "name": "input", "datatype": "FP32", "shape": [2, 3, *model.input_size],
        "data": flat}]}, timeout=30).json()
    assert {o["name"]: o for o in as_tensor["outputs"]}["label"]["data"] == \
        outputs["label"]["data"]
    bad = httpx.post(f"{url}/v2/models/a/infer", json={"inputs": [{
        "name": "input", "datatype": "FP32", "shape": [1, 3, 2, 2], "data": [0.0] * 12}]})
    assert bad.status_code == 422
    assert httpx.get(f"{url}/v2/models/nope").status_code == 404


def test_anomaly_bundle_answers_with_a_heat_map(mixed_server: Any) -> None:
    url, _ = mixed_server
    normal = png_bytes(normal_canvas(500, (160, 120)))
    defect, _ = with_dot(normal_canvas(501, (160, 120)), 3, pixels=40)
    response = httpx.post(f"{url}/v1/predict?route=inspect&maps=1", files=[
        ("files", ("n.png", normal, "image/png")),
        ("files", ("d.png", png_bytes(defect), "image/png"))], timeout=30)
    assert response.status_code == 200, response.text
    good, bad = response.json()["predictions"]
    assert good["kind"] == bad["kind"] == "anomaly" and good["model"] == "defects"
    assert bad["score"] > good["score"] and bad["label"] == "anomaly"
    overlay = Image.open(io.BytesIO(base64.b64decode(bad["map_png"])))
    assert overlay.size == (160, 120)
    plain = httpx.post(f"{url}/v1/predict?route=inspect", files=[
        ("files", ("n.png", normal, "image/png"))]).json()["predictions"][0]
    assert "map_png" not in plain and "_map" not in plain


@pytest.mark.browser
def test_the_web_page_answers_an_uploaded_image(mixed_server: Any, chromium_driver: Any,
                                                tiny_image_folder: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = mixed_server
    image = sorted((tiny_image_folder / "red").iterdir())[0]
    expected = predict(url, [image.read_bytes()]).json()["predictions"][0]
    chromium_driver.get(url + "/")
    chromium_driver.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(chromium_driver, 30).until(
        lambda d: d.find_element(By.ID, "label").text.strip() != "")
    assert chromium_driver.find_element(By.ID, "label").text == expected["label"]
    bars = chromium_driver.find_elements(By.CSS_SELECTOR, "#bars .topk")
    assert len(bars) == len(expected["topk"])
    assert "model a" in chromium_driver.find_element(By.ID, "who").text
    assert chromium_driver.find_element(By.ID, "error").text == ""


def test_drift_of_the_live_inputs_is_watched(trained_bundles: dict[str, Path],
                                             tiny_image_folder: Path, tmp_path: Path,
                                             imagegen: Any) -> None:
    bundles = {"a": Path(shutil.copytree(trained_bundles["cnn"], tmp_path / "a"))}
    cfg = config(bundles, tmp_path, fallback=[],
                 drift={"window": 24, "every": 12, "permutations": 100})
    same = [p.read_bytes() for cls in ("red", "green", "blue")
            for p in sorted((tiny_image_folder / cls).iterdir())[:4]]
    other = imagegen.folder(tmp_path / "other", ("yellow",), per_class=24, seed=5)
    shifted = [p.read_bytes() for p in sorted((other / "yellow").iterdir())]
    with BackgroundServer(cfg) as url:
        wait_ready(url)
        assert httpx.get(f"{url}/v1/drift").json()["a"]["last"] is None
        for start in range(0, 12, 4):
            assert predict(url, same[start:start + 4]).status_code == 200
        calm = _wait_for_check(url, 1)
        assert calm["window"] == 12
        assert not calm["drifted"], calm["reasons"]
        for start in range(0, 24, 4):
            assert predict(url, shifted[start:start + 4]).status_code == 200
        drifted = _wait_for_check(url, 3)
        assert drifted["drifted"] and drifted["reasons"], drifted
        assert 'vitkit_drift{model="a"} 1.0' in httpx.get(f"{url}/metrics").text


def _wait_for_check(url: str, checks: int, timeout: float = 60) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(f"{url}/v1/drift").json()["a"]
        if state["checks"] >= checks:
            return state["last"]
        time.sleep(0.05)
    raise AssertionError("no drift check ran")
