"""One model update: candidate → validated → shadow → canary → promoted (or rolled back) —
its states, what each side did, the verdict, and the checks before any traffic.

A candidate bundle is loaded beside the live model and checked before it sees any traffic:
compatible task and labels, recorded accuracy and a re-measure on the live bundle's reference
images (its run's validation split) not below live − ``max_drop``, p95 latency not above live
× ``latency_factor``. In **shadow** it gets a copy of a share of live traffic and answers
nobody (agreement with live is counted); in **canary** it answers a share of real requests.
When the canary ends, it is promoted if error rate, p95 latency, unknown rate and agreement
held, and rolled back otherwise — the reason is recorded either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from vitkit.serve.served import CLASSIFY, ServedModel

VALIDATING, SHADOW, CANARY = "validating", "shadow", "canary"
PROMOTED, ROLLED_BACK, REJECTED = "promoted", "rolled back", "rejected"
ACTIVE = (SHADOW, CANARY)


class UpdateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_drop: float = Field(0.02, ge=0, le=1, description="accuracy the candidate may lose")
    latency_factor: float = Field(1.5, ge=1, description="candidate p95 / live p95 at most")
    reference_images: int = Field(200, ge=0, description="validation images re-measured")
    shadow_share: float = Field(0.5, ge=0, le=1, description="share of live traffic mirrored")
    shadow_requests: int = Field(20, ge=0, description="mirrored images before the canary")
    canary_share: float = Field(0.1, gt=0, le=1, description="share of traffic it answers")
    canary_requests: int = Field(50, ge=1, description="images it answers before the verdict")
    canary_seconds: float | None = Field(None, gt=0, description="or this long in canary, "
                                         "whichever comes first (with at least one answer)")
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_unknown_increase: float = Field(0.05, ge=0, le=1, description="unknown rate over live")
    min_agreement: float = Field(0.9, ge=0, le=1, description="same label as live, shadow and "
                                 "canary together")


@dataclass
class Observed:
    """What one side (live or candidate) did during a rollout."""

    answers: int = 0
    errors: int = 0
    unknown: int = 0
    latencies: list[float] = field(default_factory=list)

    def record(self, seconds: float, answers: list[dict[str, Any]]) -> None:
        self.answers += len(answers)
        self.unknown += sum(1 for a in answers if a.get("unknown"))
        self.latencies.append(seconds)

    @property
    def p95(self) -> float | None:
        return p95(self.latencies)

    @property
    def unknown_rate(self) -> float:
        return self.unknown / self.answers if self.answers else 0.0

    @property
    def error_rate(self) -> float:
        total = self.answers + self.errors
        return self.errors / total if total else 0.0


@dataclass
class ModelUpdate:
    name: str
    candidate: ServedModel | None  # None while it loads
    previous: ServedModel
    config: UpdateConfig
    state: str = VALIDATING
    started: float = field(default_factory=time.time)
    history: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)
    live: Observed = field(default_factory=Observed)
    trial: Observed = field(default_factory=Observed)
    compared: int = 0
    agreed: int = 0
    shadowed: int = 0
    entered: float = field(default_factory=time.time)

    def move(self, state: str, reason: str) -> None:
        self.history.append({"time": time.time(), "from": self.state, "to": state,
                             "reason": reason})
        self.state = state
        self.entered = time.time()

    def canary_over(self) -> bool:
        judged = self.trial.answers + self.trial.errors
        if judged >= self.config.canary_requests:
            return True
        seconds = self.config.canary_seconds
        return seconds is not None and judged > 0 and time.time() - self.entered >= seconds

    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def compare(self, live: list[dict[str, Any]], trial: list[dict[str, Any]]) -> None:
        self.compared += len(live)
        self.agreed += sum(1 for a, b in zip(live, trial, strict=True)
                           if a["label"] == b["label"])

    def verdict(self) -> tuple[bool, str]:
        """Whether the canary held, and why (the first regression, or the figures)."""
        c = self.config
        if self.trial.error_rate > c.max_error_rate:
            return False, f"error rate {self.trial.error_rate:.1%} > {c.max_error_rate:.1%}"
        live_p95, trial_p95 = self.live.p95, self.trial.p95
        if live_p95 and trial_p95 and trial_p95 > c.latency_factor * live_p95:
            return False, (f"p95 latency {1000 * trial_p95:.1f} ms > {c.latency_factor:g} x "
                           f"live {1000 * live_p95:.1f} ms")
        if self.trial.unknown_rate > self.live.unknown_rate + c.max_unknown_increase:
            return False, (f"unknown rate {self.trial.unknown_rate:.1%} vs live "
                           f"{self.live.unknown_rate:.1%}")
        agreement = self.agreement()
        if agreement is not None and agreement < c.min_agreement:
            return False, f"agreement with live {agreement:.1%} < {c.min_agreement:.0%}"
        return True, (f"held: error rate {self.trial.error_rate:.1%}, p95 "
                      f"{1000 * (trial_p95 or 0):.1f} ms (live {1000 * (live_p95 or 0):.1f}), "
                      f"unknown {self.trial.unknown_rate:.1%}, agreement "
                      f"{(agreement if agreement is not None else 1.0):.1%}")

    def describe(self) -> dict[str, Any]:
        return {"state": self.state,
                "candidate_version": self.candidate.version if self.candidate else None,
                "previous_version": self.previous.version, "validation": self.validation,
                "shadowed": self.shadowed, "canary_answers": self.trial.answers,
                "agreement": self.agreement(), "history": self.history}

    def record(self) -> dict[str, Any]:
        """What the state file keeps of this update (no live objects)."""
        return {"started": self.started, "state": self.state,
                "candidate_version": self.candidate.version if self.candidate else None,
                "candidate_bundle": str(self.candidate.bundle) if self.candidate else None,
                "previous_version": self.previous.version, "history": self.history}


def p95(values: list[float]) -> float | None:
    return float(np.percentile(values, 95)) if values else None


# ----------------------------------------------------------------------------- validation
def validate(candidate: ServedModel, live: ServedModel, config: UpdateConfig
             ) -> tuple[bool, dict[str, Any]]:
    """The checks before any traffic; returns (passed, figures with the reasons)."""
    figures: dict[str, Any] = {"checks": []}
    problems: list[str] = []
    if candidate.kind != live.kind:
        problems.append(f"task {candidate.kind} differs from live {live.kind}")
    elif candidate.labels != live.labels:
        problems.append(f"labels {candidate.labels} differ from live {live.labels}")
    if not problems:
        recorded = (_recorded_accuracy(candidate), _recorded_accuracy(live))
        figures["recorded_accuracy"] = {"candidate": recorded[0], "live": recorded[1]}
        if None not in recorded and recorded[0] < recorded[1] - config.max_drop:  # type: ignore[operator]
            problems.append(f"recorded accuracy {recorded[0]:.3f} < live {recorded[1]:.3f} - "
                            f"{config.max_drop:g}")
        measured = _reference_accuracy(candidate, live, config.reference_images)
        figures["reference"] = measured
        if measured and measured["candidate"] < measured["live"] - config.max_drop:
            problems.append(f"accuracy on {measured['n']} reference images "
                            f"{measured['candidate']:.3f} < live {measured['live']:.3f} - "
                            f"{config.max_drop:g}")
        latency = {"candidate": _p95_latency(candidate), "live": _p95_latency(live)}
        figures["p95_ms"] = {k: round(1000 * v, 2) for k, v in latency.items()}
        if latency["candidate"] > config.latency_factor * latency["live"]:
            problems.append(f"p95 latency {1000 * latency['candidate']:.1f} ms > "
                            f"{config.latency_factor:g} x live {1000 * latency['live']:.1f} ms")
    figures["problems"] = problems
    return not problems, figures


def _recorded_accuracy(model: ServedModel) -> float | None:
    """The validation accuracy recorded in the bundle as the model was loaded."""
    from vitkit.bundle import Bundle

    meta = Bundle.open(model._opened or model.bundle).meta
    metrics = (meta.train or {}).get("metrics") or {}
    value = (metrics.get("val") or {}).get("accuracy")
    return float(value) if value is not None else None


def _reference_accuracy(candidate: ServedModel, live: ServedModel, limit: int
                        ) -> dict[str, Any] | None:
    """Both models on the live run's validation images (``RUN/splits.csv`` beside
    ``RUN/bundle``); None when there are none (a bundle kept outside its run folder)."""
    if candidate.kind != CLASSIFY or limit == 0:
        return None
    splits = Path(live.bundle).resolve().parent / "splits.csv"
    if not splits.is_file():
        return None
    from vitkit.data.images import ImageProblem
    from vitkit.data.intensity import decode_upload
    from vitkit.data.manifest import read_manifest

    rows = [r for r in read_manifest(splits) if r.split == "val"][:limit]
    # read as uploads are: once per intensity spec, so each side sees its own rendering
    specs = [m.intensity for m in (candidate, live) if m.intensity is not None]
    correct = {"candidate": 0, "live": 0}
    n = 0
    for start in range(0, len(rows), 32):
        images, labels = [], []
        for row in rows[start:start + 32]:
            try:
                images.append(decode_upload(Path(row.path).read_bytes(), specs))
            except (ImageProblem, OSError):
                continue
            labels.append(row.label)
        if not images:
            continue
        n += len(images)
        for side, model in (("candidate", candidate), ("live", live)):
            answers = model.infer([model.prepare(im) for im in images])
            correct[side] += sum(1 for a, y in zip(answers, labels, strict=True)
                                 if a["topk"][0]["label"] == y)
    if n == 0:
        return None
    return {"n": n, "candidate": correct["candidate"] / n, "live": correct["live"] / n}


def _p95_latency(model: ServedModel, calls: int = 12) -> float:
    from PIL import Image

    image = model.prepare(Image.new("RGB", (64, 64), (128, 128, 128)))
    times = []
    with torch.no_grad():
        for _ in range(calls):
            started = time.perf_counter()
            model.infer([image])
            times.append(time.perf_counter() - started)
    return p95(times) or 0.0
