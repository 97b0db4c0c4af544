"""The HTTP API fuzzed with schemathesis against its own ``/openapi.json`` (a bounded sample of
``bench/fuzz_api.py``'s loop), and each defect the fuzzer found, as the request that found it.

The server is real (uvicorn on a loopback port) with an admin token, so the admin operations
are fuzzed with the right token, a wrong one and none.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from vitkit.serve.server import BackgroundServer  # noqa: E402

CI_CASES = 400  # ~10 s here; bench/fuzz_api.py --cases 10000 is the long run
MIN_CASES = 300  # hypothesis may stop early on small input spaces, never this early


def _bench_module() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "fuzz_api.py"
    spec = importlib.util.spec_from_file_location("vitkit_bench_fuzz_api", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fuzz_api = _bench_module()


@pytest.fixture(scope="module")
def url(trained_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("serve-fuzz")
    before = os.environ.get("VITKIT_ADMIN_TOKEN")
    os.environ["VITKIT_ADMIN_TOKEN"] = fuzz_api.ADMIN_TOKEN
    try:
        with BackgroundServer(fuzz_api.serve_config(trained_bundles["cnn"], folder)) as base:
            fuzz_api.wait_ready(base)
            yield base
    finally:
        if before is None:
            os.environ.pop("VITKIT_ADMIN_TOKEN", None)
        else:
            os.environ["VITKIT_ADMIN_TOKEN"] = before


@pytest.fixture(scope="module")
def schema(url: str) -> Any:
    return schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=30)


def failures(schema: Any, url: str, method: str, path: str, **case: Any) -> tuple[Any, list[str]]:
    """Sends one hand-made case and runs the fuzzer's four checks on the answer."""
    from schemathesis import checks
    from schemathesis.core.failures import FailureGroup

    made = schema[path][method].Case(**case)
    response = made.call(base_url=url, timeout=30)
    failed = []
    for name in fuzz_api.CHECK_NAMES:
        try:
            made.validate_response(response, checks=[getattr(checks, name)])
        except (AssertionError, FailureGroup) as exc:
            failed.append(f"{name}: {exc}")
    return response, failed


def png_base64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_every_operation_fuzzed_without_a_failure(url: str) -> None:
    result = fuzz_api.fuzz(url, CI_CASES, fuzz_api.ADMIN_TOKEN, seed=0)
    print(fuzz_api.report(result))
    assert result.cases >= MIN_CASES
    schema_ops = httpx.get(f"{url}/openapi.json").json()["paths"]
    operations = {f"{m.upper()} {p}" for p, ops in schema_ops.items() for m in ops}
    assert set(result.by_operation) == operations, "an operation was never fuzzed"
    assert sum(result.failures.values()) == 0, fuzz_api.report(result)
    # The generator reached past the 404s and 422s to real answers; the right token reached
    # the candidate check (403: outside bundle_roots), wrong ones the rate limit (429).
    assert result.statuses[200] > 50
    assert {403, 404, 422, 429} <= set(result.statuses)


def test_non_ascii_digit_in_the_binary_header_is_a_400(url: str) -> None:
    # "²".isdigit() is True and int("²") raises: this was a 500.
    response = httpx.post(f"{url}/v2/models/a/infer", content=b'{"inputs": []}',
                          headers={"Inference-Header-Content-Length": "²".encode("latin-1")})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad header"


def test_binary_v2_answer_is_declared(schema: Any, url: str) -> None:
    # An octet-stream answer (binary_data_output) was "Undocumented Content-Type".
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "data": [png_base64()]}], "parameters": {"binary_data_output": True}}
    response, failed = failures(schema, url, "POST", "/v2/models/{name}/infer",
                                path_parameters={"name": "a"}, body=body,
                                media_type="application/json")
    assert response.status_code == 200
    assert response.headers["content-type"] == ["application/octet-stream"]
    assert failed == []


def test_binary_v2_request_is_declared(schema: Any, url: str) -> None:
    operation = schema["/v2/models/{name}/infer"]["POST"]
    content = operation.definition.raw["requestBody"]["content"]
    assert "application/octet-stream" in content
    header = "Inference-Header-Content-Length"
    assert header in {p["name"] for p in operation.definition.raw["parameters"]}
    image = base64.b64decode(png_base64())
    head = (b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", '
            b'"parameters": {"binary_data_size": %d}}]}' % (4 + len(image)))
    body = head + len(image).to_bytes(4, "little") + image
    response, failed = failures(schema, url, "POST", "/v2/models/{name}/infer",
                                path_parameters={"name": "a"}, body=body,
                                media_type="application/octet-stream",
                                headers={header: str(len(head))})
    assert response.status_code == 200, response.text
    assert failed == []


def test_head_and_get_have_their_own_operation_ids(url: str) -> None:
    # FastAPI gave GET and HEAD of one route the same operationId (a warning per route, and
    # clients keyed by it see one operation), named after whichever method the set's hash
    # order put first.
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert paths["/livez"]["get"]["operationId"] == "livez_livez_get"
    assert paths["/livez"]["head"]["operationId"] == "livez_livez_head"


def test_predict_inputs_are_declared(schema: Any, url: str) -> None:
    # route, maps and X-User-Id were read by the handler but not in the schema, so no client or
    # fuzzer could know them; an unknown route is a declared 404.
    parameters = {p["name"] for p in
                  schema["/v1/predict"]["POST"].definition.raw["parameters"]}
    assert {"route", "maps", "X-User-Id"} <= parameters
    response, failed = failures(schema, url, "POST", "/v1/predict", query={"route": "nope"},
                                headers={"X-User-Id": "u1"}, body={"image": png_base64()},
                                media_type="application/json")
    assert response.status_code == 404 and failed == []
    response, failed = failures(schema, url, "POST", "/v1/predict",
                                body=base64.b64decode(png_base64()),
                                media_type="application/octet-stream")
    assert response.status_code == 200 and failed == [], response.text
