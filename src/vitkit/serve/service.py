"""The serving core, without HTTP: models, batchers, routing, fallback, metrics, the log.

:class:`Service` answers decoded images; :mod:`vitkit.serve.app` puts HTTP around it.
A little over 450 lines: the answering path (route, fallback, finish, log, drift) is one
sequence that shares the service's state; model updates already live in
:mod:`vitkit.serve.updates`, protocols in ``v1`` / ``v2``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from vitkit.data.intensity import IntensitySpec
from vitkit.predictor.predict import UNKNOWN
from vitkit.serve.batcher import MicroBatcher, Overloaded
from vitkit.serve.config import DEFAULT_ROUTE, ServeConfig
from vitkit.serve.log import RequestLog
from vitkit.serve.metrics import Metrics
from vitkit.serve.router import CircuitBreaker, choose_arm
from vitkit.serve.served import ServedModel
from vitkit.serve.slot import Slot
from vitkit.serve.state import BundleRef, StateStore
from vitkit.serve.updates import Updates
from vitkit.tasks.base import PairedUpload, ServedInput

logger = logging.getLogger("vitkit.serve")


class NoModelAvailable(Exception):
    """Every model of the chain failed, timed out, is not ready or has an open circuit."""

    def __init__(self, reasons: dict[str, str], overloaded: bool) -> None:
        super().__init__("; ".join(f"{m}: {r}" for m, r in reasons.items()))
        self.reasons = reasons
        self.overloaded = overloaded


class UnknownRoute(Exception):
    pass


class AudioNotAccepted(Exception):
    """Audio was sent to a route whose models answer images only."""


TAKES_NO_AUDIO = "takes no audio"


class RequestTooLarge(Exception):
    """More images in one request than a model's queue can ever hold."""


class ModelFailure(Exception):
    """The model answered something unusable (a NaN or infinite score)."""


class Service:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.slots: dict[str, Slot] = {}
        self.drift: dict[str, Any] = {}  # model name -> DriftMonitor of its live version
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
        self.updates = Updates(config, self.slots, self.state, self._load, self._slot,
                               self._run, self._watch_drift, self._in_background)
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
                self.updates.restore[spec.name] = saved.previous
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

    # The update state lives in :class:`Updates`; these names keep tests and tools short.
    @property
    def rollouts(self) -> dict[str, Any]:
        return self.updates.rollouts

    @property
    def candidates(self) -> dict[str, Slot]:
        return self.updates.candidates

    @property
    def previous(self) -> dict[str, Slot]:
        return self.updates.previous

    async def start_candidate(self, name: str, bundle: str, variant: str | None = None
                              ) -> dict[str, Any]:
        """See :meth:`Updates.start`."""
        return await self.updates.start(name, bundle, variant)

    async def rollback(self, name: str, reason: str = "by hand") -> dict[str, Any]:
        """See :meth:`Updates.rollback`."""
        return await self.updates.rollback(name, reason)

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

    def intensity_specs(self) -> list[IntensitySpec]:
        """The distinct intensity specs of the live and candidate models: an upload is decoded
        once per spec (DICOM and 16-bit files read for them), before routing picks a model."""
        slots = [*self.slots.values(), *self.updates.candidates.values()]
        specs = (slot.model.intensity for slot in slots)
        return list(dict.fromkeys(spec for spec in specs if spec is not None))

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
        slots = [*self.slots.values(), *self.updates.spare_slots()]
        for batcher in {id(s.batcher): s.batcher for s in slots}.values():
            await batcher.stop()
        if self.log is not None:
            # Off the event loop: closing waits (bounded) for the database to take the rest.
            await asyncio.get_running_loop().run_in_executor(None, self.log.close)
        self.decoders.shutdown(wait=False)

    # ------------------------------------------------------------------ answering
    async def answer(self, images: Sequence[ServedInput], user_id: str | None = None,
                     route: str | None = None, with_maps: bool = False
                     ) -> list[dict[str, Any]]:
        """One answer per image from the route's arm for this user, or from the fallback chain;
        ``with_maps`` adds the task's picture (base64 PNG; ``map_png``: an anomaly heat map,
        ``overlay_png``: a mask or boxes over the image) to each answer. A paired image + audio
        example (:class:`~vitkit.tasks.base.PairedUpload`) goes only to models that take audio.

        Raises:
            UnknownRoute: No such route.
            RequestTooLarge: More images than a model's queue holds.
            AudioNotAccepted: Audio sent, and no model of the chain takes it.
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
        with_audio = any(isinstance(item, PairedUpload) for item in images)
        for name in chain:
            slot = self.slots.get(name)
            breaker = self.breakers[name]
            if slot is None:
                reasons[name] = "not loaded" if name in self.load_errors else "not ready"
                continue
            if with_audio and not slot.model.takes_audio:
                reasons[name] = TAKES_NO_AUDIO
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
                slot, results, arm_name = await self.updates.route(name, slot, images,
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
            key = slot.model.picture_key
            pictures = [item for item in images if isinstance(item, Image.Image)]
            if with_maps and key is not None and len(pictures) == len(images):
                loop = asyncio.get_running_loop()
                pngs = await asyncio.gather(*[
                    loop.run_in_executor(self.decoders, slot.model.overlay_png, image, result)
                    for image, result in zip(pictures, results, strict=True)])
                for answer, png in zip(answers, pngs, strict=True):
                    if png is not None:
                        answer[key] = base64.b64encode(png).decode("ascii")
            return answers
        if reasons and set(reasons.values()) == {TAKES_NO_AUDIO}:
            raise AudioNotAccepted(f"no model of route '{route}' takes audio ("
                                   f"{', '.join(reasons)} answer images only); send the image "
                                   "alone, or a route to an image + audio model")
        raise NoModelAvailable(reasons, overloaded)

    async def _run(self, slot: Slot, images: Sequence[ServedInput]) -> list[dict[str, Any]]:
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
        slot = self.slots.get(model) or self.updates.previous.get(model)
        if slot is None:
            return None
        labels = list(slot.model.labels)
        if slot.model.kind == "classify":
            labels.append(UNKNOWN)  # "none of my classes" is a true answer too
        candidate = self.updates.candidates.get(model)
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
            if spec.name in self.updates.rollouts:
                rollout = self.updates.rollouts[spec.name].describe()
                entry["rollout"] = rollout if admin else {
                    k: v for k, v in rollout.items() if k != "history"}
            if spec.name in self.load_errors:
                entry["error"] = self.load_errors[spec.name] if admin else "failed to load"
            models.append(entry)
        routes = {name: [arm.model_dump() for arm in arms]
                  for name, arms in self.config.routes.items()}
        return {"models": models, "routes": routes, "fallback": self.config.fallback}
