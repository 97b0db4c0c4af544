"""The same application on Ray Serve answers as the single-process server does."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from tests.requirements import require

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
try:
    import ray
    from ray import serve
except ImportError:
    ray = serve = None  # the test says why; failing here would stop the whole run in CI

from tests.serve.test_serve_http import predict, wait_ready  # noqa: E402

from vitkit.serve import ray as vitkit_ray  # noqa: E402
from vitkit.serve.config import ServeConfig  # noqa: E402
from vitkit.serve.server import BackgroundServer  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
def test_ray_replicas_answer_like_the_single_process_server(trained_bundles: dict[str, Path],
                                                           tiny_image_folder: Path) -> None:
    if ray is None:
        require("ray", "Ray is not installed (pip install -e '.[ray]')")
    config = ServeConfig.model_validate({
        "models": [{"name": "m", "bundle": str(trained_bundles["cnn"])}], "log": {"url": None}})
    images = [p.read_bytes() for cls in ("red", "green", "blue")
              for p in sorted((tiny_image_folder / cls).iterdir())[:3]]
    with BackgroundServer(config) as url:
        wait_ready(url)
        expected = [predict(url, [image]).json()["predictions"][0] for image in images]
    port = _free_port()
    ray.init(include_dashboard=False, num_cpus=2, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(vitkit_ray.deployment(config, replicas=2, cpus_per_replica=0.5),
                  name="vitkit", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Ray Serve never became ready"
            time.sleep(0.5)
        for image, want in zip(images, expected, strict=True):
            got = predict(url, [image]).json()["predictions"][0]
            assert got["label"] == want["label"] and got["version"] == want["version"]
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
    finally:
        serve.shutdown()
        ray.shutdown()
