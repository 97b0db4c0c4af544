"""What a restart must not forget: each model's live version (after a promotion), the version a
rollback restores, and the rollout history — one JSON file, written atomically on each change.

The config says which bundle a model *starts* from; the state file says what it became. On
start the server restores the state of a model only while the config still names the same
bundle and variant as when the state was written: an operator who edits the config wins, and
the stale state of that model is dropped (with a log line).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitkit.atomic import write_text_atomic

logger = logging.getLogger("vitkit.serve")
STATE_SCHEMA = 1
HISTORY_KEPT = 50  # rollouts per model kept in the file


@dataclass(frozen=True)
class BundleRef:
    bundle: str
    variant: str | None
    version: str | None = None

    def same_source(self, other: BundleRef) -> bool:
        return (Path(self.bundle).resolve() == Path(other.bundle).resolve()
                and self.variant == other.variant)


@dataclass
class ModelState:
    configured: BundleRef
    live: BundleRef
    previous: BundleRef | None = None
    rollouts: list[dict[str, Any]] = field(default_factory=list)
    updated: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelState:
        previous = data.get("previous")
        return cls(configured=BundleRef(**data["configured"]), live=BundleRef(**data["live"]),
                   previous=BundleRef(**previous) if previous else None,
                   rollouts=list(data.get("rollouts") or []),
                   updated=float(data.get("updated") or 0.0))


class StateStore:
    """The state file (or nothing, for ``state_file: null``)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.models: dict[str, ModelState] = {}
        if self.path is not None and self.path.is_file():
            self.models = self._read(self.path)

    def restorable(self, name: str, configured: BundleRef) -> ModelState | None:
        """The saved state of ``name`` if the config still names the same bundle and
        variant; otherwise None (and the stale state is dropped)."""
        state = self.models.get(name)
        if state is None:
            return None
        if not state.configured.same_source(configured):
            logger.warning("serve state: the config now names %s for %s (was %s); its saved "
                           "live version and rollback target are dropped", configured.bundle,
                           name, state.configured.bundle)
            del self.models[name]
            return None
        return state

    def record(self, name: str, configured: BundleRef, live: BundleRef,
               previous: BundleRef | None, rollout: dict[str, Any] | None = None) -> None:
        state = self.models.get(name)
        rollouts = list(state.rollouts) if state is not None else []
        if rollout is not None:
            rollouts = [r for r in rollouts if r.get("started") != rollout.get("started")]
            rollouts.append(rollout)
        self.models[name] = ModelState(configured, live, previous, rollouts[-HISTORY_KEPT:])
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        document = {"schema": STATE_SCHEMA, "saved": time.time(),
                    "models": {n: s.to_json() for n, s in self.models.items()}}
        try:
            write_text_atomic(self.path, json.dumps(document, indent=1, default=str))
        except OSError as exc:
            logger.error("serve state: cannot write %s (%s); promotions will not survive a "
                         "restart until it can", self.path, exc)

    @staticmethod
    def _read(path: Path) -> dict[str, ModelState]:
        try:
            document = json.loads(path.read_text())
            if document.get("schema") != STATE_SCHEMA:
                raise ValueError(f"schema {document.get('schema')!r}, expected {STATE_SCHEMA}")
            return {name: ModelState.from_json(data)
                    for name, data in document["models"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.error("serve state: %s is unreadable (%s); starting from the config. Move "
                         "it away to silence this.", path, exc)
            return {}
