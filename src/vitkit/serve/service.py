"""The serving core, without HTTP: models, batchers, routing, fallback, metrics, the log.

:class:`Service` answers decoded images; :mod:`vitkit.serve.app` puts HTTP around it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vitkit.serve.batcher import MicroBatcher, Overloaded
from vitkit.serve.config import DEFAULT_ROUTE, ServeConfig
from vitkit.serve.log import RequestLog
from vitkit.serve.router import CircuitBreaker, choose_arm
from vitkit.serve.served import ServedModel

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class NoModelAvailable(Exception):
    """Every model of the chain failed, timed out, is not ready or has an open circuit."""

    def __init__(self, reasons: dict[str, str], overloaded: bool) -> None:
        super().__init__("; ".join(f"{m}: {r}" for m, r in reasons.items()))
        self.reasons = reasons
        self.overloaded = overloaded


class UnknownRoute(Exception):
    pass


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("vitkit_requests", "Images answered or refused, by model, arm "
                                "and outcome", ["model", "arm", "outcome"], registry=r)
        self.latency = Histogram("vitkit_request_latency_seconds", "Time from decoded image "
                                 "to answer", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("vitkit_batch_size", "Images per model call", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("vitkit_queue_depth", "Images waiting for a model call",
                                 ["model"], registry=r)
        self.unknown = Counter("vitkit_unknown", "Images answered 'unknown' (out of "
                               "distribution)", ["model"], registry=r)
        self.fallbacks = Counter("vitkit_fallbacks", "Answers given by a fallback model",
                                 ["failed", "answered"], registry=r)
        self.ready = Gauge("vitkit_model_ready", "1 when the model is loaded and warmed",
                           ["model"], registry=r)


class Service:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.models: dict[str, ServedModel] = {}
        self.batchers: dict[str, MicroBatcher[Any, dict[str, Any]]] = {}
        self.breakers = {m.name: CircuitBreaker(config.breaker.failures,
                                                config.breaker.cooldown_s)
                         for m in config.models}
        self.load_errors: dict[str, str] = {}
        self.metrics = Metrics()
        self.log = RequestLog(config.log.url, config.log.flush_ms) if config.log.url else None
        self.decoders = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vitkit-decode")
        self.draining = False
        self.loaded = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def load_all(self) -> None:
        """Loads and warms every model (in a thread: the server answers /livez meanwhile)."""
        loop = asyncio.get_running_loop()
        for spec in self.config.models:
            try:
                model = await loop.run_in_executor(
                    None, ServedModel.load, spec.name, spec.bundle, spec.variant)
                await loop.run_in_executor(None, model.warm)
            except Exception as exc:  # noqa: BLE001 - one bad bundle must not stop the others
                self.load_errors[spec.name] = f"{type(exc).__name__}: {exc}"
                continue
            self.add_model(model)
        self.loaded.set()

    def add_model(self, model: ServedModel) -> None:
        batching = self.config.batching
        batcher: MicroBatcher[Any, dict[str, Any]] = MicroBatcher(
            lambda items: model.infer(items),  # looked up per call: a model can be swapped
            batching.max_batch, batching.max_wait_ms, batching.max_queue, model.name,
            on_batch=self.metrics.batch_size.labels(model.name).observe)
        batcher.start()
        self.models[model.name] = model
        self.batchers[model.name] = batcher
        self.metrics.ready.labels(model.name).set(1)

    @property
    def ready(self) -> bool:
        """Loaded and warmed: every model, or at least those that could be loaded once all
        were tried (a broken one is reported by /v1/models, the others serve)."""
        return self.loaded.is_set() and bool(self.models)

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
        if self.log is not None:
            self.log.close()
        self.decoders.shutdown(wait=False)

    # ------------------------------------------------------------------ answering
    async def answer(self, images: Sequence[Image.Image], user_id: str | None = None,
                     route: str | None = None) -> list[dict[str, Any]]:
        """One answer per image from the route's arm for this user, or from the fallback chain.

        Raises:
            UnknownRoute: No such route.
            NoModelAvailable: Every model of the chain failed or was unavailable.
        """
        route = route or DEFAULT_ROUTE
        arms = self.config.routes.get(route)
        if arms is None:
            raise UnknownRoute(route)
        arm = choose_arm(arms, user_id, route)
        chain = [arm.model, *[m for m in self.config.fallback if m != arm.model]]
        reasons: dict[str, str] = {}
        overloaded = False
        started = time.perf_counter()
        for name in chain:
            model = self.models.get(name)
            breaker = self.breakers[name]
            if model is None:
                reasons[name] = self.load_errors.get(name, "not ready")
                continue
            if not breaker.allow():
                reasons[name] = "circuit open"
                continue
            try:
                results = await self._run(model, images)
            except Overloaded:
                overloaded = True
                reasons[name] = "queue full"
                self.metrics.requests.labels(name, arm.model, "overloaded").inc(len(images))
                continue
            except Exception as exc:  # noqa: BLE001 - any model failure: the next one answers
                breaker.failure()
                reasons[name] = ("timed out" if isinstance(exc, TimeoutError)
                                 else f"{type(exc).__name__}: {exc}")
                self.metrics.requests.labels(name, arm.model, "error").inc(len(images))
                continue
            breaker.success()
            latency = time.perf_counter() - started
            return self._finish(model, arm.model, route, results, latency,
                                next(iter(reasons), None))
        raise NoModelAvailable(reasons, overloaded)

    async def _run(self, model: ServedModel, images: Sequence[Image.Image]
                   ) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        tensors = await asyncio.gather(*[loop.run_in_executor(self.decoders, model.prepare, im)
                                         for im in images])
        batcher = self.batchers[model.name]
        calls = [asyncio.ensure_future(batcher.submit(t)) for t in tensors]
        self.metrics.queue_depth.labels(model.name).set(batcher.depth)
        try:
            return await asyncio.wait_for(asyncio.gather(*calls),
                                          self.config.batching.timeout_ms / 1000)
        except BaseException:
            for call in calls:
                call.cancel()
            raise

    def _finish(self, model: ServedModel, arm: str, route: str, results: list[dict[str, Any]],
                latency: float, fallback_from: str | None) -> list[dict[str, Any]]:
        m = self.metrics
        now = time.time()
        answers = []
        for result in results:
            answer = {**result, "kind": model.kind, "model": model.name,
                      "version": model.version, "arm": arm, "route": route,
                      "request_id": uuid.uuid4().hex, "latency_ms": round(1000 * latency, 3)}
            if fallback_from is not None:
                answer["fallback_from"] = fallback_from
            answers.append(answer)
            m.requests.labels(model.name, arm, "ok").inc()
            m.latency.labels(model.name).observe(latency)
            if result.get("unknown"):
                m.unknown.labels(model.name).inc()
            if self.log is not None:
                self.log.add({"request_id": answer["request_id"], "time": now, "route": route,
                              "model": model.name, "version": model.version, "arm": arm,
                              "label": str(result["label"]), "score": float(result["score"]),
                              "unknown": bool(result.get("unknown", False)),
                              "latency_ms": answer["latency_ms"],
                              "fallback_from": fallback_from})
        if fallback_from is not None:
            m.fallbacks.labels(fallback_from, model.name).inc(len(results))
        return answers

    def describe(self) -> dict[str, Any]:
        models = []
        for spec in self.config.models:
            model = self.models.get(spec.name)
            entry: dict[str, Any] = (model.describe() if model is not None else
                                     {"name": spec.name, "bundle": spec.bundle})
            entry["ready"] = model is not None
            entry["circuit"] = self.breakers[spec.name].state
            entry["queue_depth"] = self.batchers[spec.name].depth if model is not None else 0
            if spec.name in self.load_errors:
                entry["error"] = self.load_errors[spec.name]
            models.append(entry)
        routes = {name: [arm.model_dump() for arm in arms]
                  for name, arms in self.config.routes.items()}
        return {"models": models, "routes": routes, "fallback": self.config.fallback}
