"""Bounded load on loopback against `vitkit serve`, with ratios measured in one run.

Starts the server in this process (uvicorn on 127.0.0.1, a free port) for each setting, sends
N concurrent clients x M requests of one image each, and prints throughput, p50/p95/p99 and
errors; then the ratios the serving issue asks for:

- micro-batching on (max_batch 32) vs off (max_batch 1) at 16 and 32 clients;
- served throughput at 32 clients vs the offline batch-32 throughput of the same model;
- single-client p50 vs the offline batch-1 p50;
- vitkit vs a plain one-request-per-call FastAPI endpoint around the same torch model.

    python bench/serve_load.py BUNDLE [--requests 30] [--clients 1,16,32]
    python bench/serve_load.py BUNDLE --soak 10000   # canary promote + rollback mid-way
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn
from fastapi import FastAPI, UploadFile
from PIL import Image

from vitkit.predictor.predict import load
from vitkit.serve.config import ServeConfig
from vitkit.serve.server import BackgroundServer


def image_bytes(bundle: Path) -> bytes:
    size = load(bundle).preprocessing.input_size
    buffer = io.BytesIO()
    Image.new("RGB", (size[1], size[0]), (120, 130, 140)).save(buffer, format="JPEG")
    return buffer.getvalue()


async def _client(url: str, image: bytes, n: int, latencies: list[float],
                  errors: list[int]) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(n):
            started = time.perf_counter()
            response = await client.post(f"{url}/v1/predict",
                                         files={"files": ("x.jpg", image, "image/jpeg")})
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors.append(response.status_code)


def load_test(url: str, image: bytes, clients: int, per_client: int) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []

    async def main() -> None:
        await asyncio.gather(*[_client(url, image, per_client, latencies, errors)
                               for _ in range(clients)])

    asyncio.run(_client(url, image, 2, [], []))  # warm the connection path
    started = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"clients": clients, "requests": len(latencies), "throughput": len(latencies) / wall,
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
            "errors": len(errors)}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def server_process(command: list[str], port: int) -> Iterator[str]:
    """A server in its own process (the load generator here must not share its GIL)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode() if process.stderr else "")
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def vitkit_server(bundle: Path, max_batch: int, folder: Path) -> Any:
    import yaml

    config = folder / f"serve-b{max_batch}.yaml"
    config.write_text(yaml.safe_dump({
        "models": [{"name": "m", "bundle": str(bundle.resolve())}],
        "batching": {"max_batch": max_batch, "max_wait_ms": 5, "max_queue": 1024},
        "log": {"url": None}}))
    port = _free_port()
    return server_process([sys.executable, "-m", "vitkit", "serve", str(config), "--port",
                           str(port)], port)


def plain_server(bundle: Path) -> Any:
    port = _free_port()
    return server_process([sys.executable, __file__, str(bundle), "--plain-server",
                           str(port)], port)


def run_plain_server(bundle: Path, port: int) -> None:
    """What users write today: one request, one model call, in the request handler."""
    predictor = load(bundle, ood=False)
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/predict")
    def predict(files: UploadFile) -> dict[str, Any]:
        image = Image.open(io.BytesIO(files.file.read())).convert("RGB")
        with torch.no_grad():
            probs = predictor.predict_proba(predictor.transform(image)[None])
        return {"label": predictor.labels[int(probs.argmax())], "score": float(probs.max())}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def wait_ready(url: str) -> None:
    while httpx.get(f"{url}/readyz").status_code != 200:
        time.sleep(0.1)


def offline(bundle: Path, repeats: int = 20) -> dict[str, float]:
    predictor = load(bundle, ood=False)
    size = predictor.preprocessing.input_size
    one, many = torch.randn(1, 3, *size), torch.randn(32, 3, *size)
    for batch in (one, many):
        predictor(batch)
    singles = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor(one)
        singles.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(max(2, repeats // 5)):
        predictor(many)
    throughput = 32 * max(2, repeats // 5) / (time.perf_counter() - started)
    return {"p50_b1_ms": 1000 * statistics.median(singles), "throughput_b32": throughput}


def soak(bundle: Path, total: int, clients: int = 16) -> None:
    """``total`` requests from ``clients`` clients; a candidate (the same weights, another
    version) goes through shadow and canary to promotion at 1/3, a rollback by hand at 2/3.
    Prints errors and whether every answer reached the request log."""
    import json
    import os
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="vitkit-soak-"))
    candidate = work / "candidate"
    shutil.copytree(bundle, candidate)
    meta = json.loads((candidate / "vitkit.json").read_text())
    meta["soak"] = time.time()
    (candidate / "vitkit.json").write_text(json.dumps(meta))
    os.environ["VITKIT_ADMIN_TOKEN"] = "soak"
    config = ServeConfig.model_validate({
        "models": [{"name": "m", "bundle": str(bundle)}],
        "batching": {"max_batch": 32, "max_wait_ms": 5, "max_queue": 1024},
        "rollout": {"shadow_requests": 50, "canary_requests": 200, "canary_share": 0.2,
                    "latency_factor": 3.0, "reference_images": 50},
        "log": {"url": f"sqlite:///{work / 'log.db'}"}})
    image = image_bytes(bundle)
    done: list[int] = []
    errors: list[str] = []
    events: list[str] = []
    admin = {"Authorization": "Bearer soak"}

    async def client(url: str, share: int) -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            for _ in range(share):
                try:
                    response = await http.post(f"{url}/v1/predict", files={
                        "files": ("x.jpg", image, "image/jpeg")})
                    if response.status_code != 200:
                        errors.append(str(response.status_code))
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)
                done.append(1)

    def operator(url: str) -> None:
        while len(done) < total // 3:
            time.sleep(0.1)
        started = httpx.post(f"{url}/admin/models/m/candidate", json={"bundle": str(candidate)},
                             headers=admin, timeout=300)
        events.append(f"candidate at {len(done)}: {started.status_code}")
        while len(done) < 2 * total // 3:
            time.sleep(0.1)
        rollout = httpx.get(f"{url}/v1/models").json()["models"][0].get("rollout", {})
        events.append(f"state at {len(done)}: {rollout.get('state')}")
        back = httpx.post(f"{url}/admin/models/m/rollback", headers=admin, timeout=60)
        events.append(f"rollback at {len(done)}: {back.status_code}")

    background = BackgroundServer(config)
    started = time.perf_counter()
    with background as url:
        wait_ready(url)
        thread = threading.Thread(target=operator, args=(url,), daemon=True)
        thread.start()

        async def everyone() -> None:
            await asyncio.gather(*[client(url, total // clients) for _ in range(clients)])

        asyncio.run(everyone())
        thread.join(timeout=60)
        history = httpx.get(f"{url}/v1/models").json()["models"][0]["rollout"]["history"]
        logged = len(background.service.log.rows())
    wall = time.perf_counter() - started
    answered = len(done) - len(errors)
    print(f"soak: {len(done)} requests in {wall:.0f} s ({len(done) / wall:.1f}/s), "
          f"{len(errors)} errors {sorted(set(errors))}, {logged} logged of {answered} answered")
    for event in events:
        print(f"  {event}")
    for step in history:
        print(f"  -> {step['to']}: {step['reason']}")
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--requests", type=int, default=30, help="per client")
    parser.add_argument("--clients", default="1,16,32")
    parser.add_argument("--soak", type=int, default=0, help="run the soak test instead")
    parser.add_argument("--plain-server", type=int, default=0, metavar="PORT",
                        help=argparse.SUPPRESS)  # the baseline server's own process
    args = parser.parse_args()
    if args.plain_server:
        run_plain_server(args.bundle, args.plain_server)
        return
    if args.soak:
        soak(args.bundle, args.soak)
        return
    image = image_bytes(args.bundle)
    clients = [int(c) for c in args.clients.split(",")]
    rows: dict[tuple[str, int], dict[str, float]] = {}
    folder = Path(tempfile.mkdtemp(prefix="vitkit-load-"))
    for label, max_batch in (("batched", 32), ("unbatched", 1)):
        with vitkit_server(args.bundle, max_batch, folder) as url:
            for n in clients:
                rows[(label, n)] = load_test(url, image, n, args.requests)
    with plain_server(args.bundle) as url:
        for n in clients:
            rows[("plain FastAPI", n)] = load_test(url, image, n, args.requests)
    reference = offline(args.bundle)

    print(f"{'server':<14} {'clients':>7} {'img/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'errors':>6}")
    for (label, n), r in rows.items():
        print(f"{label:<14} {n:>7} {r['throughput']:>8.1f} {r['p50_ms']:>8.1f} "
              f"{r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>6}")
    print(f"offline: batch-1 p50 {reference['p50_b1_ms']:.1f} ms, batch-32 "
          f"{reference['throughput_b32']:.1f} img/s")
    for n in clients:
        if n > 1:
            ratio = rows[("batched", n)]["throughput"] / rows[("unbatched", n)]["throughput"]
            plain = rows[("batched", n)]["throughput"] / rows[("plain FastAPI", n)]["throughput"]
            print(f"{n} clients: batching on/off {ratio:.2f}x; vitkit/plain FastAPI "
                  f"{plain:.2f}x")
    top = max(clients)
    print(f"served at {top} clients / offline batch-32: "
          f"{rows[('batched', top)]['throughput'] / reference['throughput_b32']:.2f}")
    if 1 in clients:
        print(f"single-client p50 - offline batch-1 p50: "
              f"{rows[('batched', 1)]['p50_ms'] - reference['p50_b1_ms']:+.1f} ms")


if __name__ == "__main__":
    main()
