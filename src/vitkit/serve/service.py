"""The serving core, without HTTP: models, batchers, routing, fallback, metrics, the log.

:class:`Service` answers decoded images; :mod:`vitkit.serve.app` puts HTTP around it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import random
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vitkit.predictor.predict import UNKNOWN
from vitkit.serve.batcher import MicroBatcher, Overloaded
from vitkit.serve.config import DEFAULT_ROUTE, ServeConfig
from vitkit.serve.log import RequestLog
from vitkit.serve.rollout import (
    ACTIVE,
    CANARY,
    PROMOTED,
    REJECTED,
    ROLLED_BACK,
    SHADOW,
    VALIDATING,
    Rollout,
)
from vitkit.serve.rollout import validate as validate_candidate
from vitkit.serve.router import CircuitBreaker, choose_arm
from vitkit.serve.served import ServedModel
from vitkit.serve.state import BundleRef, StateStore

logger = logging.getLogger("vitkit.serve")

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


class RequestTooLarge(Exception):
    """More images in one request than a model's queue can ever hold."""


class ModelFailure(Exception):
    """The model answered something unusable (a NaN or infinite score)."""


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
        self.images = Counter("vitkit_images", "Images answered or refused, by model, version, "
                              "arm and outcome (ok, error, overloaded)",
                              ["model", "version", "arm", "outcome"], registry=r)
        self.http_requests = Counter("vitkit_http_requests", "HTTP requests by method, route "
                                     "and status (4xx and 5xx included)",
                                     ["method", "route", "status"], registry=r)
        self.http_latency = Histogram("vitkit_http_request_seconds", "Time from request to "
                                      "response, by route", ["route"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.log_backlog = Gauge("vitkit_log_backlog", "Answered images not yet written to the "
                                 "request-log database (memory and spill file)", registry=r)
        self.log_healthy = Gauge("vitkit_log_healthy", "1 while the request-log database "
                                 "takes writes", registry=r)
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
        self.ready = Gauge("vitkit_model_ready", "1 when the model is loaded and warmed; 0 while "
                           "loading or after a failed load", ["model"], registry=r)
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
        for spec in config.models:
            self.metrics.ready.labels(spec.name).set(0)
        self.log = (RequestLog(config.log.url, config.log.flush_ms,
                               max_memory_rows=config.log.max_memory_rows,
                               spill_path=config.log.spill_file)
                    if config.log.url else None)
        self.state = StateStore(config.state_file)
        self.restore: dict[str, BundleRef] = {}  # rollback targets known only from the file
        self.decoders = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vitkit-decode")
        self.draining = False
        self.loaded = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def load_all(self) -> None:
        """Loads and warms every model (in a thread: the server answers /livez meanwhile):
        the live version the state file kept, else the config's bundle. A model that cannot
        be loaded is logged, reported by /readyz and has ``vitkit_model_ready`` 0."""
        for spec in self.config.models:
            configured = BundleRef(spec.bundle, spec.variant)
            saved = self.state.restorable(spec.name, configured)
            model = None
            if saved is not None and \
                    Path(saved.live.bundle).resolve() != Path(spec.bundle).resolve():
                try:
                    model = await self._load(spec.name, saved.live.bundle, saved.live.variant)
                    logger.info("%s: restored the promoted version %s from %s", spec.name,
                                model.version, saved.live.bundle)
                except Exception as exc:  # noqa: BLE001 - fall back to the configured bundle
                    logger.error("%s: cannot load the promoted version kept in %s (%s: %s); "
                                 "starting from the config's bundle", spec.name,
                                 self.config.state_file, type(exc).__name__, exc)
            if model is None:
                try:
                    model = await self._load(spec.name, spec.bundle, spec.variant)
                except Exception as exc:  # noqa: BLE001 - one bad bundle must not stop others
                    self.load_errors[spec.name] = f"{type(exc).__name__}: {exc}"
                    logger.error("model %s could not be loaded from %s: %s", spec.name,
                                 spec.bundle, self.load_errors[spec.name])
                    continue
            if saved is not None and saved.previous is not None:
                self.restore[spec.name] = saved.previous
            self.add_model(model)
        self.loaded.set()
        if self.load_errors:
            logger.error("not ready: %d of %d models failed to load (%s); see /readyz",
                         len(self.load_errors), len(self.config.models),
                         ", ".join(self.load_errors))

    async def _load(self, name: str, bundle: str, variant: str | None) -> ServedModel:
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(None, ServedModel.load, name, bundle, variant)
        await loop.run_in_executor(None, model.warm)
        return model

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
        """Every configured model is loaded and warmed."""
        return self.loaded.is_set() and not self.load_errors and bool(self.models)

    def readiness(self) -> dict[str, Any]:
        """``status``: loading, not ready (a model failed to load), degraded (serving, but
        the request log is not writing or a circuit is open) or ready; with the reasons."""
        if self.draining:
            return {"status": "shutting down"}
        if not self.loaded.is_set():
            return {"status": "loading", "models": sorted(self.models)}
        state: dict[str, Any] = {"models": sorted(self.models)}
        if self.load_errors or not self.models:
            # Which models failed, not why: error text may name paths (admin: /v1/models).
            state.update(status="not ready", failed=sorted(self.load_errors))
            return state
        problems = []
        if self.log is not None and not self.log.healthy:
            problems.append(f"request log not writing for "
                            f"{self.log.status()['failing_for_s']} s "
                            f"({self.log.backlog} rows waiting)")
        open_circuits = sorted(n for n, b in self.breakers.items() if b.state != "closed")
        if open_circuits:
            problems.append(f"circuit open: {', '.join(open_circuits)}")
        state["status"] = "degraded" if problems else "ready"
        if problems:
            state["problems"] = problems
        return state

    def refresh_gauges(self) -> None:
        """Gauges read at scrape time."""
        for name, batcher in self.batchers.items():
            self.metrics.queue_depth.labels(name).set(batcher.depth)
        if self.log is not None:
            self.metrics.log_backlog.set(self.log.backlog)
            self.metrics.log_healthy.set(1.0 if self.log.healthy else 0.0)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        slots = [*self.slots.values(), *self.candidates.values(), *self.previous.values()]
        for batcher in {id(s.batcher): s.batcher for s in slots}.values():
            await batcher.stop()
        if self.log is not None:
            # Off the event loop: closing waits (bounded) for the database to take the rest.
            await asyncio.get_running_loop().run_in_executor(None, self.log.close)
        self.decoders.shutdown(wait=False)

    # ------------------------------------------------------------------ answering
    async def answer(self, images: Sequence[Image.Image], user_id: str | None = None,
                     route: str | None = None, with_maps: bool = False
                     ) -> list[dict[str, Any]]:
        """One answer per image from the route's arm for this user, or from the fallback chain;
        ``with_maps`` adds ``map_png`` (base64 PNG overlay) to anomaly answers.

        Raises:
            UnknownRoute: No such route.
            RequestTooLarge: More images than a model's queue holds.
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
                reasons[name] = "not loaded" if name in self.load_errors else "not ready"
                continue
            if len(images) > slot.batcher.max_queue:
                raise RequestTooLarge(f"{len(images)} images in one request; model {name} "
                                      f"queues at most {slot.batcher.max_queue} "
                                      "(batching.max_queue)")
            if not breaker.allow():
                reasons[name] = "circuit open"
                continue
            version = slot.model.version
            try:
                slot, results, arm_name = await self._answer_with(name, slot, images,
                                                                  arm.model)
            except Overloaded:
                breaker.release()  # no verdict on the model: a half-open trial stays free
                overloaded = True
                reasons[name] = "queue full"
                self.metrics.images.labels(name, version, arm.model, "overloaded"
                                           ).inc(len(images))
                continue
            except asyncio.CancelledError:
                breaker.release()
                raise
            except Exception as exc:  # noqa: BLE001 - any model failure: the next one answers
                breaker.failure()
                reasons[name] = ("timed out" if isinstance(exc, TimeoutError)
                                 else f"{type(exc).__name__}: {exc}")
                self.metrics.images.labels(name, version, arm.model, "error").inc(len(images))
                continue
            breaker.success()
            latency = time.perf_counter() - started
            answers = self._finish(slot.model, arm_name, route, results, latency,
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

    async def _answer_with(self, name: str, slot: Slot, images: Sequence[Image.Image],
                           arm: str) -> tuple[Slot, list[dict[str, Any]], str]:
        """The live model's answers, or, during a canary, the candidate's for its share of
        requests (a failing candidate is counted against it and live answers instead); with
        the arm to log (``<arm>:canary`` for the candidate, so reports keep versions apart)."""
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
                return candidate, results, f"{arm}:canary"
        started = time.perf_counter()
        results = await self._run(slot, images)
        if rollout is not None and rollout.state in ACTIVE:
            rollout.live.record(time.perf_counter() - started, results)
            if rollout.state == SHADOW and candidate is not None \
                    and self.rng.random() < rollout.config.shadow_share:
                self._in_background(self._shadow(name, rollout, candidate, images, results))
        return slot, results, arm

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
            results = list(await asyncio.wait_for(asyncio.gather(*calls),
                                                  self.config.batching.timeout_ms / 1000))
        except BaseException:
            for call in calls:
                call.cancel()
            raise
        for result in results:
            score = result.get("score")
            if score is None or not math.isfinite(float(score)):
                raise ModelFailure(f"the model returned a non-finite score ({score}); its "
                                   "weights or input are broken")
        return results

    async def infer_prepared(self, name: str, tensors: Sequence[Any]) -> list[dict[str, Any]]:
        """Answers for already preprocessed tensors from one named model (the v2 protocol
        names its model: no A/B arm, no fallback), through its batcher.

        Raises:
            KeyError: No loaded model of that name.
            RequestTooLarge: More images than its queue holds.
            Overloaded: Its queue is full.
            ModelFailure, TimeoutError: The model failed or was too slow.
        """
        slot = self.slots[name]
        if len(tensors) > slot.batcher.max_queue:
            raise RequestTooLarge(f"{len(tensors)} images in one request; model {name} queues "
                                  f"at most {slot.batcher.max_queue} (batching.max_queue)")
        started = time.perf_counter()
        try:
            results = await self._submit_all(slot.batcher, tensors)
        except Overloaded:
            self.metrics.images.labels(name, slot.model.version, name, "overloaded"
                                       ).inc(len(tensors))
            raise
        except Exception:
            self.metrics.images.labels(name, slot.model.version, name, "error"
                                       ).inc(len(tensors))
            raise
        return self._finish(slot.model, name, "v2", results, time.perf_counter() - started,
                            None)

    # ------------------------------------------------------------------ rollouts
    async def start_candidate(self, name: str, bundle: str, variant: str | None = None
                              ) -> dict[str, Any]:
        """Loads a candidate for model ``name``, validates it, and starts shadow → canary.

        Raises:
            RolloutError: Unknown or unloaded model, a bundle outside ``bundle_roots`` (403),
                a rollout already running, a bundle that cannot be loaded (422), a candidate
                that failed validation (409) or was cancelled while validating (409).
        """
        live = self.slots.get(name)
        if live is None:
            raise RolloutError(f"no loaded model '{name}'; models: {', '.join(self.slots)}",
                               404)
        folder = self._inside_bundle_roots(bundle)
        running = self.rollouts.get(name)
        if running is not None and running.state in (*ACTIVE, VALIDATING):
            raise RolloutError(f"'{name}' already has a candidate in {running.state}; roll it "
                               "back first (vitkit serve rollback URL NAME)")
        config = self.config.rollout
        rollout = Rollout(name, None, live.model, config)
        self.rollouts[name] = rollout
        loop = asyncio.get_running_loop()
        try:
            candidate = await self._load(name, str(folder), variant)
        except Exception as exc:  # noqa: BLE001 - a bad bundle is the caller's error
            rollout.move(REJECTED, f"could not load: {type(exc).__name__}: {exc}")
            self._save_state(name, rollout)
            raise RolloutError(f"could not load the candidate: {exc}", 422) from None
        rollout.candidate = candidate
        if rollout.state != VALIDATING:
            raise RolloutError(f"cancelled while loading: {rollout.history[-1]['reason']}", 409,
                               rollout.describe())
        passed, figures = await loop.run_in_executor(None, validate_candidate, candidate,
                                                     live.model, config)
        rollout.validation = figures
        if rollout.state != VALIDATING:  # rolled back by hand while validating
            self._save_state(name, rollout)
            raise RolloutError(f"cancelled while validating: {rollout.history[-1]['reason']}",
                               409, rollout.describe())
        if not passed:
            rollout.move(REJECTED, "; ".join(figures["problems"]))
            self._save_state(name, rollout)
            raise RolloutError(f"candidate rejected: {'; '.join(figures['problems'])}", 409,
                               rollout.describe())
        self.candidates[name] = self._slot(candidate)
        if config.shadow_requests > 0:
            rollout.move(SHADOW, "validated: " + _validation_summary(figures))
        else:
            rollout.move(CANARY, "validated (no shadow phase): " + _validation_summary(figures))
        self._save_state(name, rollout)
        return rollout.describe()

    def _inside_bundle_roots(self, bundle: str) -> Path:
        """The candidate folder, resolved, if it lies in a configured bundle root.

        Raises:
            RolloutError: No roots configured, or the folder is outside them (403).
        """
        roots = [Path(r).resolve() for r in self.config.bundle_roots]
        if not roots:
            raise RolloutError("candidate bundles are off: list the folders they may come "
                               "from in the serve config (bundle_roots: [...]) or with "
                               "--bundle-root", 403)
        folder = Path(bundle).resolve()
        if not any(folder.is_relative_to(root) for root in roots):
            raise RolloutError(f"the candidate must lie inside a bundle root "
                               f"({', '.join(map(str, roots))})", 403)
        return folder

    async def rollback(self, name: str, reason: str = "by hand") -> dict[str, Any]:
        """Ends a running or validating candidate, or restores the model a promotion
        replaced (also after a restart: the rollback target is kept in the state file).

        Raises:
            RolloutError: Nothing to roll back, or the kept target cannot be loaded.
        """
        rollout = self.rollouts.get(name)
        if rollout is not None and rollout.state in (*ACTIVE, VALIDATING):
            self._discard_candidate(name)
            rollout.move(ROLLED_BACK, reason)
            self._save_state(name, rollout)
            return rollout.describe()
        previous = self.previous.pop(name, None)
        if previous is None and name in self.restore and name in self.slots:
            target = self.restore[name]
            try:
                model = await self._load(name, target.bundle, target.variant)
            except Exception as exc:  # noqa: BLE001 - a moved or broken bundle: say so
                raise RolloutError(f"cannot load the version to restore from {target.bundle}: "
                                   f"{type(exc).__name__}: {exc}", 409) from None
            previous = self._slot(model)
        if previous is None:
            raise RolloutError(f"'{name}' has no candidate and no earlier version to restore",
                               404)
        self.restore.pop(name, None)
        replaced = self.slots[name]
        self.slots[name] = previous
        self._watch_drift(previous.model)
        self._retire(replaced)
        if rollout is not None:
            rollout.move(ROLLED_BACK, f"{reason}: version {previous.model.version} restored")
        self._save_state(name, rollout)
        if rollout is not None:
            return rollout.describe()
        return {"state": ROLLED_BACK, "version": previous.model.version}

    def _save_state(self, name: str, rollout: Rollout | None) -> None:
        spec = self.config.model(name)
        live = self.slots.get(name)
        if live is None:
            return
        previous_slot = self.previous.get(name)
        previous = (_ref(previous_slot.model) if previous_slot is not None
                    else self.restore.get(name))
        self.state.record(name, BundleRef(spec.bundle, spec.variant), _ref(live.model),
                          previous, rollout.record() if rollout is not None else None)

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
        self._save_state(name, rollout)

    def _promote(self, name: str) -> None:
        candidate = self.candidates.pop(name)
        old = self.slots[name]
        self.slots[name] = candidate  # new requests take the new slot; queued ones finish
        stale = self.previous.get(name)
        self.previous[name] = old
        self.restore.pop(name, None)
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
            self._save_state(name, rollout)

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
            m.images.labels(model.name, model.version, arm, "ok").inc()
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

    def record_feedback(self, request_id: str, label: str, replace: bool) -> str:
        """Feedback into the request log, after checking ``label`` is one the answering
        model knows. Returns the log's outcome (recorded, unknown, conflict).

        Raises:
            ValueError: A label the model does not have.
            LogUnavailable: The database does not answer.
        """
        assert self.log is not None
        row = self.log.lookup(request_id)
        if row is None:
            return "unknown"
        known = self._labels_of(str(row["model"]))
        if known is not None and label not in known:
            shown = ", ".join(known[:20]) + (", …" if len(known) > 20 else "")
            raise ValueError(f"{label!r} is not a label of model {row['model']}: {shown}")
        return self.log.feedback(request_id, label, replace)

    def _labels_of(self, model: str) -> list[str] | None:
        slot = self.slots.get(model) or self.previous.get(model)
        if slot is None:
            return None
        labels = list(slot.model.labels)
        if slot.model.kind == "classify":
            labels.append(UNKNOWN)  # "none of my classes" is a true answer too
        candidate = self.candidates.get(model)
        if candidate is not None:
            labels += [x for x in candidate.model.labels if x not in labels]
        return labels

    def describe(self, admin: bool = False) -> dict[str, Any]:
        """Models, routes and fallback; bundle paths and load-error text only for ``admin``
        (they tell an attacker where files live and what failed)."""
        models = []
        for spec in self.config.models:
            slot = self.slots.get(spec.name)
            model = slot.model if slot is not None else None
            entry: dict[str, Any] = (model.describe() if model is not None else
                                     {"name": spec.name, "bundle": spec.bundle})
            if not admin:
                entry.pop("bundle", None)
            entry["ready"] = model is not None
            entry["circuit"] = self.breakers[spec.name].state
            entry["queue_depth"] = slot.batcher.depth if slot is not None else 0
            if spec.name in self.rollouts:
                rollout = self.rollouts[spec.name].describe()
                entry["rollout"] = rollout if admin else {
                    k: v for k, v in rollout.items() if k != "history"}
            if spec.name in self.load_errors:
                entry["error"] = self.load_errors[spec.name] if admin else "failed to load"
            models.append(entry)
        routes = {name: [arm.model_dump() for arm in arms]
                  for name, arms in self.config.routes.items()}
        return {"models": models, "routes": routes, "fallback": self.config.fallback}


def _ref(model: ServedModel) -> BundleRef:
    return BundleRef(str(model.bundle), model.variant, model.version)


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
