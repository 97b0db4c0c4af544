"""Soak: N requests against `vitkit serve` in its own process; memory sampled as it goes.

The server runs as ``python -m vitkit serve run BUNDLE --port P --log-db sqlite:///…`` (its
own process, as in production); the load comes from ``--clients`` other processes, each with
one keep-alive httpx client sending small PNG images as raw ``image/png`` bodies one at a time.
Every ``--every`` requests the server's RSS is read from ``/proc/PID/status`` (VmRSS).

Printed: requests vs RSS, the RSS growth per 10,000 requests after the warm-up block (a least-
squares slope over the samples after the first), throughput, status counts (all must be 200),
and, after a graceful stop (SIGTERM: the request log writes what it holds), the request log's
row count, which must equal the answered requests. Exit status 1 when either check fails.

    python bench/serve_soak.py                       # trains a tiny bundle first (~20 s)
    python bench/serve_soak.py --requests 2000 --every 500   # quick
    python bench/serve_soak.py --bundle runs/x/bundle --requests 100000
"""

from __future__ import annotations

import argparse
import collections
import io
import multiprocessing
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

_client: httpx.Client | None = None
_images: list[bytes] = []


def small_pngs(count: int = 8, size: int = 48) -> list[bytes]:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


def _start_worker(url: str) -> None:
    global _client, _images
    _client = httpx.Client(base_url=url, timeout=60,
                           limits=httpx.Limits(max_keepalive_connections=1))
    _images = small_pngs()


def _send(count: int) -> dict[int, int]:
    """``count`` requests on this worker's keep-alive client; status counts (0: no answer)."""
    assert _client is not None
    statuses: collections.Counter[int] = collections.Counter()
    for i in range(count):
        try:
            response = _client.post("/v1/predict", content=_images[i % len(_images)],
                                    headers={"Content-Type": "image/png"})
            statuses[response.status_code] += 1
        except httpx.HTTPError:
            statuses[0] += 1
    return dict(statuses)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server never became ready")


def growth_per_10k(samples: list[tuple[int, float]]) -> float:
    """MiB per 10,000 requests: least-squares slope over the samples after the first block."""
    after = samples[1:]
    if len(after) < 2:
        return float("nan")
    x = np.array([n for n, _ in after], dtype=float)
    y = np.array([r for _, r in after], dtype=float)
    return float(np.polyfit(x, y, 1)[0] * 10_000)


def soak(bundle: Path, folder: Path, requests: int, clients: int, every: int) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_db = folder / "log.db"
    server_log = (folder / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "vitkit", "serve", "run", str(bundle), "--port", str(port),
         "--log-db", f"sqlite:///{log_db}"],
        cwd=folder, stdout=server_log, stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    statuses: collections.Counter[int] = collections.Counter()
    try:
        wait_ready(url, server)
        samples = [(0, rss_mib(server.pid))]
        print(f"server pid {server.pid} ready at {url}; RSS {samples[0][1]:.1f} MiB; "
              f"{requests:,} requests from {clients} client processes", flush=True)
        started = time.perf_counter()
        context = multiprocessing.get_context("spawn")  # no torch state forked into clients
        with context.Pool(clients, initializer=_start_worker, initargs=(url,)) as pool:
            done = 0
            while done < requests:
                block = min(every, requests - done)
                shares = [block // clients + (i < block % clients) for i in range(clients)]
                for counts in pool.map(_send, [s for s in shares if s]):
                    statuses.update(counts)
                done += block
                samples.append((done, rss_mib(server.pid)))
                rate = done / (time.perf_counter() - started)
                print(f"  {done:>9,} requests  RSS {samples[-1][1]:8.1f} MiB  "
                      f"{rate:6.0f} req/s", flush=True)
        seconds = time.perf_counter() - started
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
    with sqlite3.connect(log_db) as db:
        rows = db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    return {"requests": requests, "clients": clients, "seconds": seconds,
            "throughput": requests / seconds, "statuses": dict(statuses), "samples": samples,
            "growth_per_10k": growth_per_10k(samples), "log_rows": rows,
            "server_exit": server.returncode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--every", type=int, default=10_000, help="RSS sample interval")
    parser.add_argument("--bundle", type=Path, help="a trained bundle (default: train one)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from fuzz_api import tiny_bundle  # beside this script in bench/

            bundle = tiny_bundle(folder / "train")
        result = soak(bundle.resolve(), folder, args.requests, args.clients, args.every)
    print(f"\n{'requests':>10}  {'RSS MiB':>8}")
    for done, rss in result["samples"]:
        print(f"{done:>10,}  {rss:8.1f}")
    ok = result["statuses"].get(200, 0)
    print(f"\nthroughput: {result['throughput']:.0f} req/s ({result['requests']:,} in "
          f"{result['seconds']:.0f} s, {result['clients']} client processes)")
    print(f"RSS growth after the first {args.every:,}: {result['growth_per_10k']:+.2f} MiB "
          "per 10,000 requests")
    print("statuses: " + ", ".join(f"{s}: {n:,}" for s, n in sorted(result["statuses"].items())))
    print(f"request log rows: {result['log_rows']:,} (answered: {ok:,}); server exit status "
          f"{result['server_exit']}")
    good = ok == result["requests"] and result["log_rows"] == ok
    print("OK" if good else "FAILED: not every request answered 200, or log rows missing")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
