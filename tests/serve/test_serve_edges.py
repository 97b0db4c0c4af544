"""The service's edges over real HTTP: v2 inputs that are wrong in every way, tritonclient with
its defaults (binary tensors), what operators expect (request ids, 4xx in /metrics, HEAD,
offline /docs, CORS) and input lengths."""

from __future__ import annotations

import base64
import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from tests.serve.test_serve_http import config, png_bytes, predict, wait_ready  # noqa: E402

from vitkit.serve.server import BackgroundServer  # noqa: E402

IMAGE = png_bytes(Image.new("RGB", (48, 48), (45, 70, 215)))


@pytest.fixture(scope="module")
def server(trained_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, Any]]:
    root = tmp_path_factory.mktemp("edges")
    cfg = config({"a": trained_bundles["cnn"]}, root, fallback=[],
                 cors={"allow_origins": ["https://ui.example"]})
    background = BackgroundServer(cfg)
    with background as url:
        wait_ready(url)
        yield url, background.service


def v2(url: str, tensor: dict[str, Any], **extra: Any) -> Any:
    return httpx.post(f"{url}/v2/models/a/infer", json={"inputs": [tensor], **extra},
                      timeout=30)


def test_v2_inputs_that_are_wrong_get_a_4xx_never_a_500(server: tuple[str, Any]) -> None:
    url, service = server
    height, width = service.models["a"].input_size
    size = 3 * height * width
    cases = {
        "shape not numbers": ({"name": "input", "datatype": "FP32", "shape": ["x"],
                               "data": [0.0]}, 422),
        "shape[0] a list": ({"name": "input", "datatype": "FP32", "shape": [[1], 3],
                             "data": [0.0]}, 422),
        "negative": ({"name": "input", "datatype": "FP32", "shape": [-1, 3, height, width],
                      "data": [0.0]}, 422),
        "zero images": ({"name": "image", "datatype": "BYTES", "shape": [0], "data": []}, 422),
        "too many": ({"name": "image", "datatype": "BYTES", "shape": [10_000], "data": []},
                     413),
        "short data": ({"name": "input", "datatype": "FP32", "shape": [1, 3, height, width],
                        "data": [0.0] * 10}, 422),
        "strings as FP32": ({"name": "input", "datatype": "FP32", "shape": [1, 3, height, width],
                             "data": ["a"] * size}, 422),
        "unknown datatype": ({"name": "input", "datatype": "INT8", "shape": [1],
                              "data": [1]}, 422),
        "bytes not base64": ({"name": "image", "datatype": "BYTES", "shape": [1],
                              "data": ["@@@"]}, 422),
        "bytes not a string": ({"name": "image", "datatype": "BYTES", "shape": [1],
                                "data": [5]}, 422),
    }
    for name, (tensor, status) in cases.items():
        response = v2(url, tensor)
        assert response.status_code == status, (name, response.text)
        assert set(response.json()) >= {"error"}, name
    for value in ("NaN", "Infinity", "-Infinity"):
        data = value + ", 0.0" * (size - 1)  # JSON has no NaN; Python's parser takes it
        body = ('{"inputs": [{"name": "input", "datatype": "FP32", '
                f'"shape": [1, 3, {height}, {width}], "data": [{data}]}}]}}')
        response = httpx.post(f"{url}/v2/models/a/infer", content=body,
                              headers={"content-type": "application/json"}, timeout=30)
        assert response.status_code == 422 and response.json()["error"] == "non-finite input"
    not_json = httpx.post(f"{url}/v2/models/a/infer", content=b"{",
                          headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "error" in not_json.json()
    assert httpx.get(f"{url}/v2/models/nope").json()["error"] == "unknown model"
    assert httpx.get(f"{url}/v2/nowhere").json()["error"] == "not found", \
        "the protocol's error body, not FastAPI's"


def test_tritonclient_with_its_defaults(server: tuple[str, Any],
                                        tiny_image_folder: Path) -> None:
    http = pytest.importorskip("tritonclient.http")
    url, service = server
    client = http.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("a")
    assert not client.is_model_ready("nope")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert client.get_model_metadata("a")["versions"] == [service.models["a"].version]
    paths = sorted((tiny_image_folder / "green").iterdir())[:3]
    raw = [p.read_bytes() for p in paths]
    expected = predict(url, raw).json()["predictions"]
    files = http.InferInput("image", [len(raw)], "BYTES")
    files.set_data_from_numpy(np.array(raw, dtype=np.object_))  # binary_data=True: the default
    result = client.infer("a", [files])
    labels = [x.decode() for x in result.as_numpy("label")]
    assert labels == [e["label"] for e in expected]
    np.testing.assert_allclose(result.as_numpy("score"), [e["score"] for e in expected],
                               atol=1e-5)
    assert result.as_numpy("unknown").dtype == np.bool_
    model = service.models["a"]
    batch = np.stack([model.prepare(Image.open(io.BytesIO(b)).convert("RGB")).numpy()
                      for b in raw]).astype(np.float32)
    tensor = http.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    chosen = client.infer("a", [tensor], outputs=[
        http.InferRequestedOutput("label"), http.InferRequestedOutput("score",
                                                                      binary_data=False)])
    assert [x.decode() for x in chosen.as_numpy("label")] == labels
    assert chosen.as_numpy("unknown") is None, "only the outputs asked for"
    with pytest.raises(Exception, match="unknown model|no loaded model"):
        client.infer("nope", [files])


def test_binary_inputs_that_lie_about_their_size_are_refused(server: tuple[str, Any]) -> None:
    url, _ = server
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 999}}]}).encode()
    payload = struct.pack("<I", len(IMAGE)) + IMAGE
    for length, body in ((str(len(header)), header + payload), ("abc", header + payload),
                         (str(10**9), header + payload)):
        response = httpx.post(f"{url}/v2/models/a/infer", content=body, headers={
            "Inference-Header-Content-Length": length,
            "content-type": "application/octet-stream"})
        assert response.status_code in (400, 422), response.text
    cut = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                  "parameters": {"binary_data_size": 10}}]}).encode()
    response = httpx.post(f"{url}/v2/models/a/infer", content=cut + payload[:10], headers={
        "Inference-Header-Content-Length": str(len(cut))})
    assert response.status_code == 422 and "longer than the body" in response.json()["detail"]


def test_what_operators_expect(server: tuple[str, Any]) -> None:
    url, _ = server
    given = httpx.get(f"{url}/livez", headers={"X-Request-Id": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    made = predict(url, [b"not an image"])
    assert made.status_code == 415 and len(made.headers["x-request-id"]) == 32
    hostile = httpx.get(f"{url}/livez", headers={"X-Request-Id": "x" * 500})
    assert hostile.headers["x-request-id"] != "x" * 500, "never echoed unchecked"
    for path in ("/livez", "/readyz", "/v2/health/ready"):
        head = httpx.head(f"{url}{path}")
        assert head.status_code == 200 and head.content == b""
    assert httpx.get(f"{url}/v1/nope").status_code == 404
    metrics = httpx.get(f"{url}/metrics").text
    assert 'vitkit_http_requests_total{method="POST",route="/v1/predict",status="415"}' \
        in metrics
    assert 'route="unmatched",status="404"' in metrics
    docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()
    assert "/docs/assets/swagger-ui-bundle.js" in docs.text
    assert httpx.get(f"{url}/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert httpx.get(f"{url}/openapi.json").json()["components"]["schemas"]["V2Request"]


def test_cors_is_off_unless_an_origin_is_listed(server: tuple[str, Any],
                                                trained_bundles: dict[str, Path],
                                                tmp_path: Path) -> None:
    url, _ = server
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    allowed = httpx.options(f"{url}/v1/predict", headers=preflight)
    assert allowed.headers["access-control-allow-origin"] == "https://ui.example"
    other = httpx.options(f"{url}/v1/predict", headers={**preflight,
                                                         "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    with BackgroundServer(config({"a": trained_bundles["cnn"]}, tmp_path, fallback=[])) as off:
        plain = httpx.get(f"{off}/livez", headers={"Origin": "https://ui.example"})
        assert "access-control-allow-origin" not in plain.headers


def test_every_json_field_has_a_length(server: tuple[str, Any]) -> None:
    url, service = server
    answer = predict(url, [IMAGE]).json()["predictions"][0]
    long_label = httpx.post(f"{url}/v1/feedback", json={"request_id": answer["request_id"],
                                                        "label": "x" * 257})
    assert long_label.status_code == 422 and "label" in long_label.json()["detail"]
    unknown = httpx.post(f"{url}/v1/feedback", json={"request_id": answer["request_id"],
                                                     "label": "zebra"})
    assert unknown.status_code == 422 and "not a label" in unknown.json()["detail"]
    labels = service.models["a"].labels
    first = httpx.post(f"{url}/v1/feedback", json={"request_id": answer["request_id"],
                                                   "label": labels[0]})
    assert first.status_code == 200
    second = httpx.post(f"{url}/v1/feedback", json={"request_id": answer["request_id"],
                                                    "label": labels[1]})
    assert second.status_code == 409, "never silently overwritten"
    replaced = httpx.post(f"{url}/v1/feedback", json={
        "request_id": answer["request_id"], "label": labels[1], "replace": True})
    assert replaced.status_code == 200
    long_id = httpx.post(f"{url}/v1/feedback", json={"request_id": "r" * 65, "label": "x"})
    assert long_id.status_code == 422
    extra = httpx.post(f"{url}/v1/predict", json={
        "images": [base64.b64encode(IMAGE).decode()], "surprise": 1})
    assert extra.status_code == 422 and "surprise" in extra.json()["detail"]
    raw = httpx.post(f"{url}/v1/predict", content=IMAGE, headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.json()["predictions"][0]["image"] == "body"
