"""The serving core, without HTTP: models, batchers, routing, fallback, metrics, the log.

:class:`Service` answers decoded images; :mod:`vitkit.serve.app` puts HTTP around it.
"""

from __future__ import annotations

import asyncio
import base64
import random
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
from vitkit.serve.rollout import ACTIVE, CANARY, PROMOTED, REJECTED, ROLLED_BACK, SHADOW, Rollout
from vitkit.serve.rollout import validate as validate_candidate
from vitkit.serve.router import CircuitBreaker, choose_arm
from vitkit.serve.served import ServedModel

RETIRE_AFTER_S = 30.0
"""A replaced model's batcher keeps running this long, so requests already queued on it
finish (a swap drops no request)."""

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


class RolloutError(Exception):
    """A candidate cannot start (unknown model, one already rolling out) or was rejected."""

    def __init__(self, message: str, status: int = 409,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = details or {}


@dataclass
class Slot:
    """A model and its batcher, replaced together (one dict assignment) on promote/rollback."""

    model: ServedModel
    batcher: MicroBatcher[Any, dict[str, Any]]


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
        self.drift = Gauge("vitkit_drift", "1 when the last drift check of the live model's "
                           "recent inputs rejected 'like the training data'", ["model"],
                           registry=r)
        self.drift_p_value = Gauge("vitkit_drift_feature_p_value", "p-value of the last "
                                   "feature-distribution test", ["model"], registry=r)


class Service:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.slots: dict[str, Slot] = {}
        self.previous: dict[str, Slot] = {}  # what a manual rollback after promotion restores
        self.rollouts: dict[str, Rollout] = {}
        self.candidates: dict[str, Slot] = {}
        self.drift: dict[str, Any] = {}  # model name -> DriftMonitor of its live version
        self.rng = random.Random()
        self._background: set[asyncio.Task[Any]] = set()
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
        self.slots[model.name] = self._slot(model)
        self.metrics.ready.labels(model.name).set(1)
        self._watch_drift(model)

    def _watch_drift(self, model: ServedModel) -> None:
        monitor = model.drift_monitor(self.config.drift)
        if monitor is None:
            self.drift.pop(model.name, None)
        else:
            self.drift[model.name] = monitor

    def _slot(self, model: ServedModel) -> Slot:
        batching = self.config.batching
        batcher: MicroBatcher[Any, dict[str, Any]] = MicroBatcher(
            lambda items: model.infer(items),  # looked up per call: tests inject faults
            batching.max_batch, batching.max_wait_ms, batching.max_queue, model.name,
            on_batch=self.metrics.batch_size.labels(model.name).observe)
        batcher.start()
        return Slot(model, batcher)

    @property
    def models(self) -> dict[str, ServedModel]:
        return {name: slot.model for name, slot in self.slots.items()}

    @property
    def batchers(self) -> dict[str, MicroBatcher[Any, dict[str, Any]]]:
        return {name: slot.batcher for name, slot in self.slots.items()}

    @property
    def ready(self) -> bool:
        """Loaded and warmed: every model, or at least those that could be loaded once all
        were tried (a broken one is reported by /v1/models, the others serve)."""
        return self.loaded.is_set() and bool(self.models)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        slots = [*self.slots.values(), *self.candidates.values(), *self.previous.values()]
        for batcher in {id(s.batcher): s.batcher for s in slots}.values():
            await batcher.stop()
        if self.log is not None:
            self.log.close()
        self.decoders.shutdown(wait=False)

    # ------------------------------------------------------------------ answering
    async def answer(self, images: Sequence[Image.Image], user_id: str | None = None,
                     route: str | None = None, with_maps: bool = False
                     ) -> list[dict[str, Any]]:
        """One answer per image from the route's arm for this user, or from the fallback chain;
        ``with_maps`` adds ``map_png`` (base64 PNG overlay) to anomaly answers.

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
            slot = self.slots.get(name)
            breaker = self.breakers[name]
            if slot is None:
                reasons[name] = self.load_errors.get(name, "not ready")
                continue
            if not breaker.allow():
                reasons[name] = "circuit open"
                continue
            try:
                slot, results = await self._answer_with(name, slot, images)
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
            answers = self._finish(slot.model, arm.model, route, results, latency,
                                   next(iter(reasons), None))
            if with_maps and slot.model.kind == "anomaly":
                loop = asyncio.get_running_loop()
                pngs = await asyncio.gather(*[
                    loop.run_in_executor(self.decoders, slot.model.overlay_png, image,
                                         result["_map"])
                    for image, result in zip(images, results, strict=True)])
                for answer, png in zip(answers, pngs, strict=True):
                    answer["map_png"] = base64.b64encode(png).decode("ascii")
            return answers
        raise NoModelAvailable(reasons, overloaded)

    async def _answer_with(self, name: str, slot: Slot, images: Sequence[Image.Image]
                           ) -> tuple[Slot, list[dict[str, Any]]]:
        """The live model's answers, or, during a canary, the candidate's for its share of
        requests (a failing candidate is counted against it and live answers instead)."""
        rollout = self.rollouts.get(name)
        candidate = self.candidates.get(name)
        if rollout is not None and candidate is not None and rollout.state == CANARY \
                and self.rng.random() < rollout.config.canary_share:
            started = time.perf_counter()
            try:
                results = await self._run(candidate, images)
            except Exception:  # noqa: BLE001 - the candidate's failure is not the user's
                rollout.trial.errors += len(images)
                self._maybe_decide(name)
            else:
                rollout.trial.record(time.perf_counter() - started, results)
                self._in_background(self._compare(rollout, slot, images, results))
                self._maybe_decide(name)
                return candidate, results
        started = time.perf_counter()
        results = await self._run(slot, images)
        if rollout is not None and rollout.state in ACTIVE:
            rollout.live.record(time.perf_counter() - started, results)
            if rollout.state == SHADOW and candidate is not None \
                    and self.rng.random() < rollout.config.shadow_share:
                self._in_background(self._shadow(name, rollout, candidate, images, results))
        return slot, results

    async def _run(self, slot: Slot, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        model, batcher = slot.model, slot.batcher
        tensors = await asyncio.gather(*[loop.run_in_executor(self.decoders, model.prepare, im)
                                         for im in images])
        self.metrics.queue_depth.labels(model.name).set(batcher.depth)
        return await self._submit_all(batcher, tensors)

    async def _submit_all(self, batcher: MicroBatcher[Any, dict[str, Any]],
                          tensors: Sequence[Any]) -> list[dict[str, Any]]:
        """Every tensor through the batcher within ``timeout_ms`` (cancelled together)."""
        calls = [asyncio.ensure_future(batcher.submit(t)) for t in tensors]
        try:
            return list(await asyncio.wait_for(asyncio.gather(*calls),
                                               self.config.batching.timeout_ms / 1000))
        except BaseException:
            for call in calls:
                call.cancel()
            raise

    async def infer_prepared(self, name: str, tensors: Sequence[Any]) -> list[dict[str, Any]]:
        """Answers for already preprocessed tensors from one named model (the v2 protocol
        names its model: no A/B arm, no fallback), through its batcher.

        Raises:
            KeyError: No loaded model of that name.
            Overloaded: Its queue is full.
        """
        slot = self.slots[name]
        started = time.perf_counter()
        results = await self._submit_all(slot.batcher, tensors)
        return self._finish(slot.model, name, "v2", results, time.perf_counter() - started,
                            None)

    # ------------------------------------------------------------------ rollouts
    async def start_candidate(self, name: str, bundle: str, variant: str | None = None
                              ) -> dict[str, Any]:
        """Loads a candidate for model ``name``, validates it, and starts shadow → canary.

        Raises:
            RolloutError: Unknown or unloaded model, a rollout already running, a bundle that
                cannot be loaded (422), or a candidate that failed validation (409).
        """
        live = self.slots.get(name)
        if live is None:
            raise RolloutError(f"no loaded model '{name}'; models: {', '.join(self.slots)}",
                               404)
        running = self.rollouts.get(name)
        if running is not None and running.state in ACTIVE + ("validating",):
            raise RolloutError(f"'{name}' already has a candidate in {running.state}; roll it "
                               "back first")
        loop = asyncio.get_running_loop()
        try:
            candidate = await loop.run_in_executor(None, ServedModel.load, name, bundle,
                                                   variant)
            await loop.run_in_executor(None, candidate.warm)
        except Exception as exc:  # noqa: BLE001 - a bad path or bundle is the caller's error
            raise RolloutError(f"could not load the candidate: {exc}", 422) from None
        config = self.config.rollout
        rollout = Rollout(name, candidate, live.model, config)
        self.rollouts[name] = rollout
        passed, figures = await loop.run_in_executor(None, validate_candidate, candidate,
                                                     live.model, config)
        rollout.validation = figures
        if not passed:
            rollout.move(REJECTED, "; ".join(figures["problems"]))
            raise RolloutError(f"candidate rejected: {'; '.join(figures['problems'])}", 409,
                               rollout.describe())
        self.candidates[name] = self._slot(candidate)
        if config.shadow_requests > 0:
            rollout.move(SHADOW, "validated: " + _validation_summary(figures))
        else:
            rollout.move(CANARY, "validated (no shadow phase): " + _validation_summary(figures))
        return rollout.describe()

    def rollback(self, name: str, reason: str = "by hand") -> dict[str, Any]:
        """Ends a running candidate, or restores the model a promotion replaced.

        Raises:
            RolloutError: Nothing to roll back.
        """
        rollout = self.rollouts.get(name)
        if rollout is not None and rollout.state in ACTIVE:
            self._discard_candidate(name)
            rollout.move(ROLLED_BACK, reason)
            return rollout.describe()
        previous = self.previous.pop(name, None)
        if previous is None:
            raise RolloutError(f"'{name}' has no candidate and no earlier version to restore",
                               404)
        replaced = self.slots[name]
        self.slots[name] = previous
        self._watch_drift(previous.model)
        self._retire(replaced)
        if rollout is not None:
            rollout.move(ROLLED_BACK, f"{reason}: version {previous.model.version} restored")
            return rollout.describe()
        return {"state": ROLLED_BACK, "version": previous.model.version}

    def _maybe_decide(self, name: str) -> None:
        rollout = self.rollouts[name]
        if rollout.state != CANARY:
            return
        if not rollout.canary_over():
            return
        held, reason = rollout.verdict()
        if held:
            self._promote(name)
            rollout.move(PROMOTED, reason)
        else:
            self._discard_candidate(name)
            rollout.move(ROLLED_BACK, f"automatic: {reason}")

    def _promote(self, name: str) -> None:
        candidate = self.candidates.pop(name)
        old = self.slots[name]
        self.slots[name] = candidate  # new requests take the new slot; queued ones finish
        stale = self.previous.get(name)
        self.previous[name] = old
        self._watch_drift(candidate.model)
        if stale is not None:
            self._retire(stale)

    def _discard_candidate(self, name: str) -> None:
        slot = self.candidates.pop(name, None)
        if slot is not None:
            self._retire(slot)

    def _retire(self, slot: Slot) -> None:
        async def later() -> None:
            await asyncio.sleep(RETIRE_AFTER_S)
            if all(s is not slot for s in (*self.slots.values(), *self.previous.values())):
                await slot.batcher.stop()
        self._in_background(later())

    async def _shadow(self, name: str, rollout: Rollout, candidate: Slot,
                      images: Sequence[Image.Image], live: list[dict[str, Any]]) -> None:
        try:
            trial = await self._run(candidate, images)
        except Exception:  # noqa: BLE001 - counted, never seen by a user
            rollout.trial.errors += len(images)
            return
        rollout.compare(live, trial)
        rollout.shadowed += len(images)
        if rollout.state == SHADOW and rollout.shadowed >= rollout.config.shadow_requests:
            agreement = rollout.agreement() or 0.0
            if agreement < rollout.config.min_agreement:
                self._discard_candidate(name)
                rollout.move(ROLLED_BACK, f"automatic: agreement with live in shadow "
                             f"{agreement:.1%} < {rollout.config.min_agreement:.0%}")
            else:
                rollout.move(CANARY, f"shadow: {rollout.shadowed} images, agreement "
                             f"{agreement:.1%}")

    async def _compare(self, rollout: Rollout, live: Slot, images: Sequence[Image.Image],
                       trial: list[dict[str, Any]]) -> None:
        """During the canary: what live would have said, for the agreement figure."""
        try:
            rollout.compare(await self._run(live, images), trial)
        except Exception:  # noqa: BLE001 - a live failure here says nothing of the candidate
            return

    def _in_background(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _finish(self, model: ServedModel, arm: str, route: str, results: list[dict[str, Any]],
                latency: float, fallback_from: str | None) -> list[dict[str, Any]]:
        m = self.metrics
        now = time.time()
        answers = []
        for result in results:
            answer = {**{k: v for k, v in result.items() if not k.startswith("_")},
                      "kind": model.kind, "model": model.name,
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
        self._observe_drift(model, results)
        return answers

    def _observe_drift(self, model: ServedModel, results: list[dict[str, Any]]) -> None:
        monitor = self.drift.get(model.name)
        live = self.slots.get(model.name)
        if monitor is None or live is None or live.model is not model:
            return  # only the live version's inputs count (not a canary's)
        due = False
        for result in results:
            if result.get("_features") is not None:
                due |= monitor.observe(result["_features"], result["_class"],
                                       bool(result.get("unknown")))
        if due:
            self._in_background(self._check_drift(model.name, monitor))

    async def _check_drift(self, name: str, monitor: Any) -> None:
        report = await asyncio.get_running_loop().run_in_executor(None, monitor.check)
        self.metrics.drift.labels(name).set(1.0 if report["drifted"] else 0.0)
        feature = report.get("feature_distance") or {}
        if feature.get("p_value") is not None:
            self.metrics.drift_p_value.labels(name).set(feature["p_value"])

    def describe(self) -> dict[str, Any]:
        models = []
        for spec in self.config.models:
            slot = self.slots.get(spec.name)
            model = slot.model if slot is not None else None
            entry: dict[str, Any] = (model.describe() if model is not None else
                                     {"name": spec.name, "bundle": spec.bundle})
            entry["ready"] = model is not None
            entry["circuit"] = self.breakers[spec.name].state
            entry["queue_depth"] = slot.batcher.depth if slot is not None else 0
            if spec.name in self.rollouts:
                entry["rollout"] = self.rollouts[spec.name].describe()
            if spec.name in self.load_errors:
                entry["error"] = self.load_errors[spec.name]
            models.append(entry)
        routes = {name: [arm.model_dump() for arm in arms]
                  for name, arms in self.config.routes.items()}
        return {"models": models, "routes": routes, "fallback": self.config.fallback}


def _validation_summary(figures: dict[str, Any]) -> str:
    parts = []
    reference = figures.get("reference")
    if reference:
        parts.append(f"reference accuracy {reference['candidate']:.3f} vs live "
                     f"{reference['live']:.3f} on {reference['n']} images")
    latency = figures.get("p95_ms")
    if latency:
        parts.append(f"p95 {latency['candidate']} ms vs live {latency['live']} ms")
    return ", ".join(parts) or "compatible"
