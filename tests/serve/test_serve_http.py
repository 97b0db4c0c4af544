"""The service over real HTTP: uvicorn on a loopback port, httpx as the client."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from vitkit.data import load_rgb  # noqa: E402
from vitkit.predictor.predict import load  # noqa: E402
from vitkit.serve.config import ServeConfig  # noqa: E402
from vitkit.serve.served import ServedModel  # noqa: E402
from vitkit.serve.server import BackgroundServer  # noqa: E402


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def two_bundles(trained_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                ) -> dict[str, Path]:
    """Two different models of the same classes: a CNN (a) and a ViT (b)."""
    root = tmp_path_factory.mktemp("serve-bundles")
    return {name: Path(shutil.copytree(trained_bundles[family], root / name))
            for name, family in (("a", "cnn"), ("b", "vit"))}


def config(bundles: dict[str, Path], tmp_path: Path, **sections: Any) -> ServeConfig:
    data: dict[str, Any] = {
        "models": [{"name": n, "bundle": str(p)} for n, p in bundles.items()],
        "routes": {"default": [{"model": "a"}]},
        "fallback": ["a", "b"],
        "log": {"url": f"sqlite:///{tmp_path / 'log.db'}", "flush_ms": 20},
        "state_file": str(tmp_path / "state.json"),
        "bundle_roots": [str(tmp_path)],
        **sections,
    }
    return ServeConfig.model_validate(data)


@pytest.fixture
def server(two_bundles: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest
           ) -> Iterator[tuple[str, Any]]:
    """A running server (``indirect`` params: extra config sections) and its Service."""
    sections = getattr(request, "param", {})
    background = BackgroundServer(config(two_bundles, tmp_path, **sections))
    with background as url:
        wait_ready(url)
        yield url, background.service


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the server never became ready")


def predict(url: str, images: list[bytes], user: str | None = None, **kwargs: Any) -> Any:
    files = [("files", (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]
    headers = {"X-User-Id": user} if user else {}
    return httpx.post(f"{url}/v1/predict", files=files, headers=headers, timeout=30, **kwargs)


def test_answers_match_the_offline_predictor(server: tuple[str, Any],
                                             two_bundles: dict[str, Path],
                                             tiny_image_folder: Path) -> None:
    url, _ = server
    paths = sorted((tiny_image_folder / "red").iterdir())[:3]
    raw = [p.read_bytes() for p in paths]
    response = predict(url, raw)
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    as_json = httpx.post(f"{url}/v1/predict", json={
        "images": [base64.b64encode(b).decode() for b in raw]}, timeout=30).json()
    offline = load(two_bundles["a"])
    batch = torch.stack([offline.transform(load_rgb(p)[0]) for p in paths])
    expected = offline.predict_batch(batch, [str(p) for p in paths], top_k=5)
    for answer, again, want in zip(answers, as_json["predictions"], expected, strict=True):
        assert answer["label"] == again["label"] == want.label
        assert answer["score"] == pytest.approx(want.score, abs=1e-5)
        assert {"label", "score", "topk", "unknown", "ood_score", "model", "version", "arm",
                "request_id", "latency_ms", "kind"} <= set(answer)
        assert answer["model"] == "a" and answer["kind"] == "classify"
    assert len({a["request_id"] for a in answers}) == 3


def test_health_models_and_metrics(server: tuple[str, Any]) -> None:
    url, _ = server
    assert httpx.get(f"{url}/livez").json() == {"status": "alive"}
    models = httpx.get(f"{url}/v1/models").json()
    assert [m["name"] for m in models["models"]] == ["a", "b"]
    assert all(m["ready"] and m["circuit"] == "closed" for m in models["models"])
    image = Image.new("RGB", (48, 48), (200, 30, 30))
    assert predict(url, [png_bytes(image)] * 2).status_code == 200
    text = httpx.get(f"{url}/metrics").text
    version = models["models"][0]["version"]
    assert f'vitkit_images_total{{arm="a",model="a",outcome="ok",version="{version}"}} 2.0' \
        in text
    assert "vitkit_batch_size_bucket" in text and "vitkit_request_latency_seconds" in text
    assert 'vitkit_queue_depth{model="a"}' in text


def test_not_ready_until_loaded_and_warmed(two_bundles: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    warm = ServedModel.warm
    monkeypatch.setattr(ServedModel, "warm", lambda self: (release.wait(30), warm(self)))
    with BackgroundServer(config(two_bundles, tmp_path)) as url:
        assert httpx.get(f"{url}/livez").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 503
        image = png_bytes(Image.new("RGB", (48, 48)))
        refused = predict(url, [image])
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        release.set()
        wait_ready(url)
        assert predict(url, [image]).status_code == 200


@pytest.mark.parametrize("server", [{"limits": {"max_upload_mb": 0.05, "max_pixels": 20_000,
                                                "max_images": 2}}], indirect=True)
def test_bad_input_gets_a_clear_4xx(server: tuple[str, Any]) -> None:
    url, _ = server
    small = png_bytes(Image.new("RGB", (48, 48)))
    noise = Image.frombytes("RGB", (160, 160), bytes(range(256)) * 300)
    cases = {
        "too many": (predict(url, [small] * 3), 413),
        "far too many": (predict(url, [small[:40]] * 20), 413),
        "too large body": (predict(url, [png_bytes(noise)]), 413),
        "too many pixels": (predict(url, [png_bytes(Image.new("RGB", (200, 200)))]), 413),
        "not an image": (predict(url, [b"hello, not an image"]), 415),
        "truncated": (predict(url, [small[: len(small) // 2]]), 422),
        "bad base64": (httpx.post(f"{url}/v1/predict", json={"images": ["@@@"]}), 422),
        "bad json": (httpx.post(f"{url}/v1/predict", content=b"{", headers={
            "content-type": "application/json"}), 422),
        "no image": (httpx.post(f"{url}/v1/predict", json={"images": []}), 422),
        "wrong type": (httpx.post(f"{url}/v1/predict", content=b"x", headers={
            "content-type": "text/plain"}), 415),
    }
    for name, (response, status) in cases.items():
        assert response.status_code == status, (name, response.status_code, response.text)
        body = response.json()
        assert set(body) == {"error", "detail"}, name
    assert predict(url, [small]).status_code == 200, "the server is fine afterwards"


@pytest.mark.parametrize("server", [{"routes": {"default": [{"model": "a", "weight": 1},
                                                            {"model": "b", "weight": 1}]}}],
                         indirect=True)
def test_ab_arms_are_sticky_over_http_and_feedback_reaches_the_report(
        server: tuple[str, Any]) -> None:
    url, service = server
    image = png_bytes(Image.new("RGB", (48, 48), (40, 190, 70)))
    arms = {}
    for i in range(40):
        answer = predict(url, [image], user=f"u{i}").json()["predictions"][0]
        arms[f"u{i}"] = answer["arm"]
        again = predict(url, [image], user=f"u{i}").json()["predictions"][0]
        assert again["arm"] == answer["arm"], "sticky"
        labels = service.models[answer["arm"]].labels
        wrong = next(x for x in labels if x != answer["label"])
        label = answer["label"] if i % 3 else wrong
        feedback = httpx.post(f"{url}/v1/feedback", json={"request_id": answer["request_id"],
                                                          "label": label})
        assert feedback.status_code == 200
    assert set(arms.values()) == {"a", "b"}
    assert httpx.post(f"{url}/v1/feedback", json={"request_id": "nope", "label": "x"}
                      ).status_code == 404
    report = httpx.get(f"{url}/v1/ab").json()
    assert sum(a["requests"] for a in report["arms"]) == 80
    assert sum(a["with_feedback"] for a in report["arms"]) == 40
    assert report["comparisons"] and report["comparisons"][0]["p_value"] is not None
    rows = service.log.rows()
    assert len(rows) == 80 and sum(r["feedback"] is not None for r in rows) == 40


def _failing(*_: object) -> list[dict[str, Any]]:
    raise RuntimeError("injected fault")


@pytest.mark.parametrize("server", [{"batching": {"timeout_ms": 400, "max_wait_ms": 1},
                                     "breaker": {"failures": 2, "cooldown_s": 60},
                                     "routes": {"default": [{"model": "a"}],
                                                "warm": [{"model": "b"}]}}],
                         indirect=True)
def test_fallback_answers_on_each_fault_and_the_breaker_opens(
        server: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    url, service = server
    image = png_bytes(Image.new("RGB", (48, 48), (45, 70, 215)))
    model_a = service.models["a"]
    # b's first call (a cold ViT) can take longer than the 400 ms timeout on a busy machine,
    # which would make the fallback itself time out: warm it first.
    warmed = predict(url, [image], params={"route": "warm"})
    assert warmed.status_code == 200, warmed.text

    calls = []

    def raising(batch: list[Any]) -> list[dict[str, Any]]:
        calls.append(len(batch))
        raise RuntimeError("injected fault")

    monkeypatch.setattr(model_a, "infer", raising)
    for _ in range(3):
        answer = predict(url, [image]).json()["predictions"][0]
        assert answer["model"] == "b" and answer["fallback_from"] == "a"
    assert len(calls) == 2, "after 2 failures the circuit is open: a is not called again"
    assert httpx.get(f"{url}/v1/models").json()["models"][0]["circuit"] == "open"
    assert 'vitkit_fallbacks_total{answered="b",failed="a"} 3.0' in httpx.get(
        f"{url}/metrics").text

    service.breakers["a"].success()  # close it again; now a times out
    slow_infer = ServedModel.infer.__get__(model_a)
    monkeypatch.setattr(model_a, "infer", lambda batch: (time.sleep(1.0), slow_infer(batch))[1])
    answer = predict(url, [image]).json()["predictions"][0]
    assert answer["model"] == "b" and answer["fallback_from"] == "a"

    service.breakers["a"].success()
    del service.slots["a"]  # not ready (still loading, or failed to load)
    answer = predict(url, [image]).json()["predictions"][0]
    assert answer["model"] == "b" and answer["fallback_from"] == "a"

    monkeypatch.setattr(service.models["b"], "infer", _failing)
    refused = predict(url, [image])
    assert refused.status_code == 503 and "injected fault" in refused.json()["detail"]


@pytest.mark.parametrize("server", [{"batching": {"max_batch": 1, "max_queue": 1,
                                                  "max_wait_ms": 0},
                                     "limits": {"max_images": 1}}], indirect=True)
def test_a_full_queue_answers_503_with_retry_after(server: tuple[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url, service = server
    for name in ("a", "b"):
        model = service.models[name]
        infer = ServedModel.infer.__get__(model)
        monkeypatch.setattr(model, "infer", lambda batch, f=infer: (time.sleep(0.3), f(batch))[1])
    image = png_bytes(Image.new("RGB", (48, 48)))
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: predict(url, [image]), range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and refused.json()["error"] == "overloaded"
    assert set(statuses) <= {200, 503}


@pytest.mark.slow
def test_cli_serves_a_bundle_and_stops_gracefully_on_sigterm(two_bundles: dict[str, Path],
                                                             tmp_path: Path) -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "requests.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "vitkit", "serve", str(two_bundles["a"]), "--port", str(port),
         "--log-db", f"sqlite:///{log}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.2)
        image = png_bytes(Image.new("RGB", (48, 48), (215, 45, 40)))
        def status() -> int | str:
            try:
                return predict(url, [image]).status_code
            # Arrived after the listening socket closed, waited in the kernel's accept queue
            # when it closed (reset), or was not read yet when uvicorn closed the connection:
            # never taken, and no byte of a response. A cut-off response is still a failure.
            except (httpx.ConnectError, httpx.ReadError):
                return "refused"
            except httpx.RemoteProtocolError as exc:
                if "without sending a response" not in str(exc):
                    raise
                return "refused"

        assert status() == 200
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(status) for _ in range(8)]
            time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            statuses = [200, *(f.result() for f in pending)]
        # A request the server took is answered in full (never a reset connection or a 500).
        assert set(statuses) <= {200, 503, "refused"}, statuses
        # uvicorn re-raises the signal after its graceful shutdown: the usual SIGTERM status.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in (process.stderr.read() if process.stderr
                                                   else "")
    finally:
        if process.poll() is None:
            process.kill()
    report = subprocess.run([sys.executable, "-m", "vitkit", "serve", "ab-report", str(log),
                             "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert report.returncode == 0, report.stderr
    assert sum(a["requests"] for a in json.loads(report.stdout)["arms"]) == statuses.count(200)
