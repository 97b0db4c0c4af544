"""Model updates while serving: a candidate bundle is loaded beside the live model, validated,
shadowed, canaried, then promoted or rolled back; a rollback by hand restores the version a
promotion replaced (also after a restart, from the state file).

:class:`Updates` owns the candidates, the replaced versions and every model's
:class:`~vitkit.serve.update.ModelUpdate`; it shares the live slots with the
:class:`~vitkit.serve.service.Service`, which asks :meth:`Updates.route` who answers each
request. A swap is one dict assignment of (model, batcher); a replaced batcher keeps running
for :data:`RETIRE_AFTER_S` so requests already queued on it finish.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from vitkit.serve.config import ServeConfig
from vitkit.serve.served import ServedModel
from vitkit.serve.slot import Slot
from vitkit.serve.state import BundleRef, StateStore
from vitkit.serve.update import (
    ACTIVE,
    CANARY,
    PROMOTED,
    REJECTED,
    ROLLED_BACK,
    SHADOW,
    VALIDATING,
    ModelUpdate,
    validate,
)
from vitkit.tasks.base import ServedInput

RETIRE_AFTER_S = 30.0
"""A replaced model's batcher keeps running this long, so requests already queued on it
finish (a swap drops no request)."""

Answers = list[dict[str, Any]]


class UpdateRefused(Exception):
    """A candidate cannot start (unknown model, outside the bundle roots, one already
    running), could not be loaded, was rejected or cancelled; or nothing to roll back."""

    def __init__(self, message: str, status: int = 409,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = details or {}


class Updates:
    def __init__(self, config: ServeConfig, slots: dict[str, Slot], state: StateStore,
                 load: Callable[[str, str, str | None], Awaitable[ServedModel]],
                 make_slot: Callable[[ServedModel], Slot],
                 run: Callable[[Slot, Sequence[ServedInput]], Awaitable[Answers]],
                 live_changed: Callable[[ServedModel], None],
                 in_background: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self.config = config
        self.slots = slots  # the Service's live slots: shared, swapped here
        self.state = state
        self._load_model = load
        self._make_slot = make_slot
        self._run_on = run
        self._live_changed = live_changed
        self._in_background = in_background
        self.rng = random.Random()
        self.rollouts: dict[str, ModelUpdate] = {}
        self.candidates: dict[str, Slot] = {}
        self.previous: dict[str, Slot] = {}  # what a rollback after a promotion restores
        self.restore: dict[str, BundleRef] = {}  # rollback targets known only from the file

    def spare_slots(self) -> list[Slot]:
        """Candidates and replaced versions (their batchers stop with the service)."""
        return [*self.candidates.values(), *self.previous.values()]

    async def route(self, name: str, slot: Slot, images: Sequence[ServedInput],
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
                results = await self._run_on(candidate, images)
            except Exception:  # noqa: BLE001 - the candidate's failure is not the user's
                rollout.trial.errors += len(images)
                self._maybe_decide(name)
            else:
                rollout.trial.record(time.perf_counter() - started, results)
                self._in_background(self._compare(rollout, slot, images, results))
                self._maybe_decide(name)
                return candidate, results, f"{arm}:canary"
        started = time.perf_counter()
        results = await self._run_on(slot, images)
        if rollout is not None and rollout.state in ACTIVE:
            rollout.live.record(time.perf_counter() - started, results)
            if rollout.state == SHADOW and candidate is not None \
                    and self.rng.random() < rollout.config.shadow_share:
                self._in_background(self._shadow(name, rollout, candidate, images, results))
        return slot, results, arm


    async def start(self, name: str, bundle: str, variant: str | None = None
                              ) -> dict[str, Any]:
        """Loads a candidate for model ``name``, validates it, and starts shadow → canary.

        Raises:
            UpdateRefused: Unknown or unloaded model, a bundle outside ``bundle_roots`` (403),
                a rollout already running, a bundle that cannot be loaded (422), a candidate
                that failed validation (409) or was cancelled while validating (409).
        """
        live = self.slots.get(name)
        if live is None:
            raise UpdateRefused(f"no loaded model '{name}'; models: {', '.join(self.slots)}",
                               404)
        folder = self._inside_bundle_roots(bundle)
        running = self.rollouts.get(name)
        if running is not None and running.state in (*ACTIVE, VALIDATING):
            raise UpdateRefused(f"'{name}' already has a candidate in {running.state}; roll it "
                               "back first (vitkit serve rollback URL NAME)")
        config = self.config.rollout
        rollout = ModelUpdate(name, None, live.model, config)
        self.rollouts[name] = rollout
        loop = asyncio.get_running_loop()
        try:
            candidate = await self._load_model(name, str(folder), variant)
        except Exception as exc:  # noqa: BLE001 - a bad bundle is the caller's error
            rollout.move(REJECTED, f"could not load: {type(exc).__name__}: {exc}")
            self._save_state(name, rollout)
            raise UpdateRefused(f"could not load the candidate: {exc}", 422) from None
        rollout.candidate = candidate
        if rollout.state != VALIDATING:
            raise UpdateRefused(f"cancelled while loading: {rollout.history[-1]['reason']}", 409,
                               rollout.describe())
        passed, figures = await loop.run_in_executor(None, validate, candidate,
                                                     live.model, config)
        rollout.validation = figures
        if rollout.state != VALIDATING:  # rolled back by hand while validating
            self._save_state(name, rollout)
            raise UpdateRefused(f"cancelled while validating: {rollout.history[-1]['reason']}",
                               409, rollout.describe())
        if not passed:
            rollout.move(REJECTED, "; ".join(figures["problems"]))
            self._save_state(name, rollout)
            raise UpdateRefused(f"candidate rejected: {'; '.join(figures['problems'])}", 409,
                               rollout.describe())
        self.candidates[name] = self._make_slot(candidate)
        if config.shadow_requests > 0:
            rollout.move(SHADOW, "validated: " + _validation_summary(figures))
        else:
            rollout.move(CANARY, "validated (no shadow phase): " + _validation_summary(figures))
        self._save_state(name, rollout)
        return rollout.describe()

    def _inside_bundle_roots(self, bundle: str) -> Path:
        """The candidate folder, resolved, if it lies in a configured bundle root.

        Raises:
            UpdateRefused: No roots configured, or the folder is outside them (403).
        """
        roots = [Path(r).resolve() for r in self.config.bundle_roots]
        if not roots:
            raise UpdateRefused("candidate bundles are off: list the folders they may come "
                               "from in the serve config (bundle_roots: [...]) or with "
                               "--bundle-root", 403)
        folder = Path(bundle).resolve()
        if not any(folder.is_relative_to(root) for root in roots):
            raise UpdateRefused(f"the candidate must lie inside a bundle root "
                               f"({', '.join(map(str, roots))})", 403)
        return folder

    async def rollback(self, name: str, reason: str = "by hand") -> dict[str, Any]:
        """Ends a running or validating candidate, or restores the model a promotion
        replaced (also after a restart: the rollback target is kept in the state file).

        Raises:
            UpdateRefused: Nothing to roll back, or the kept target cannot be loaded.
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
                model = await self._load_model(name, target.bundle, target.variant)
            except Exception as exc:  # noqa: BLE001 - a moved or broken bundle: say so
                raise UpdateRefused(f"cannot load the version to restore from {target.bundle}: "
                                   f"{type(exc).__name__}: {exc}", 409) from None
            previous = self._make_slot(model)
        if previous is None:
            raise UpdateRefused(f"'{name}' has no candidate and no earlier version to restore",
                               404)
        self.restore.pop(name, None)
        replaced = self.slots[name]
        self.slots[name] = previous
        self._live_changed(previous.model)
        self._retire(replaced)
        if rollout is not None:
            rollout.move(ROLLED_BACK, f"{reason}: version {previous.model.version} restored")
        self._save_state(name, rollout)
        if rollout is not None:
            return rollout.describe()
        return {"state": ROLLED_BACK, "version": previous.model.version}

    def _save_state(self, name: str, rollout: ModelUpdate | None) -> None:
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
        self._live_changed(candidate.model)
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

    async def _shadow(self, name: str, rollout: ModelUpdate, candidate: Slot,
                      images: Sequence[ServedInput], live: list[dict[str, Any]]) -> None:
        try:
            trial = await self._run_on(candidate, images)
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

    async def _compare(self, rollout: ModelUpdate, live: Slot, images: Sequence[ServedInput],
                       trial: list[dict[str, Any]]) -> None:
        """During the canary: what live would have said, for the agreement figure."""
        try:
            rollout.compare(await self._run_on(live, images), trial)
        except Exception:  # noqa: BLE001 - a live failure here says nothing of the candidate
            return


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
