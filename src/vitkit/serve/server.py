"""Running the service under uvicorn, with a graceful stop.

On SIGTERM/SIGINT uvicorn stops accepting connections and lets in-flight requests finish;
requests that still arrive on open connections meanwhile get 503 with ``Retry-After``; the
request log writes what it holds (or spills it to its file) before the process ends.

One process, one event loop, no ``--workers``: the micro-batcher, circuit breakers, rollout
and request-log writer are state of the process, and several uvicorn workers would each load
every model, split the batches and the canary counts, and race on the state file. Scale out
with Ray Serve replicas (``vitkit serve --ray --replicas N``), or several instances behind a
load balancer, each with its own state file and log spill file.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import uvicorn

from vitkit.serve.app import create_app
from vitkit.serve.config import ServeConfig


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Any) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.service.draining = True
        super().handle_exit(sig, frame)


def make_server(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000,
                log_level: str = "warning") -> uvicorn.Server:
    app = create_app(config)
    # uvicorn's own access log is off: the app's (logger vitkit.access) adds the request id.
    return _DrainingServer(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                          timeout_graceful_shutdown=30, access_log=False),
                           app.state.service)


def console_logging(level: int = logging.INFO) -> None:
    """vitkit's service and access loggers on stderr, formatted like uvicorn's lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    for name in ("vitkit.serve", "vitkit.access"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not logger.handlers:
            logger.addHandler(handler)
        logger.propagate = False


def serve_forever(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    console_logging()
    make_server(config, host, port, log_level="info").run()


class BackgroundServer:
    """A real server on a loopback port in a thread (tests, benchmarks): ``with
    BackgroundServer(config) as url: ...``; waits until it answers /livez."""

    def __init__(self, config: ServeConfig, port: int = 0) -> None:
        self.server = make_server(config, "127.0.0.1", port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def service(self) -> Any:
        return self.server.service  # type: ignore[attr-defined]

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            threading.Event().wait(0.02)
        sockets = self.server.servers[0].sockets
        port = sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


__all__ = ["BackgroundServer", "make_server", "serve_forever"]
