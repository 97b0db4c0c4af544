"""The A/B report from the request log: per-arm figures and, from feedback, a two-proportion
z-test of each arm's accuracy against the busiest arm's (pure: rows in, a dict out)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class ArmFigures:
    arm: str
    requests: int
    latency_mean_ms: float | None
    latency_p95_ms: float | None
    unknown_rate: float | None
    with_feedback: int
    accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def ab_report(rows: Iterable[dict[str, Any]], route: str | None = None) -> dict[str, Any]:
    """Per-arm figures from the request log and, from feedback, a two-proportion z-test of
    each arm's accuracy against the first arm's (the one with the most requests).

    An arm that answered with several model versions (a promotion during the test) is split
    into ``arm@version`` rows, so figures never mix versions; canary answers are logged under
    ``<arm>:canary``."""
    by_version: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for row in rows:
        if route is not None and row.get("route") != route:
            continue
        arm = str(row.get("arm") or row.get("model"))
        by_version.setdefault((arm, row.get("version")), []).append(row)
    versions_per_arm: dict[str, int] = {}
    for arm, _ in by_version:
        versions_per_arm[arm] = versions_per_arm.get(arm, 0) + 1
    figures = [_arm_figures(arm if versions_per_arm[arm] == 1 else f"{arm}@{version}", members)
               for (arm, version), members in by_version.items()]
    figures.sort(key=lambda f: -f.requests)
    comparisons = []
    base = figures[0] if figures else None
    if base is not None and base.accuracy is not None:
        for other in figures[1:]:
            if other.accuracy is None:
                continue
            z, p = two_proportion_test(round(base.accuracy * base.with_feedback),
                                       base.with_feedback,
                                       round(other.accuracy * other.with_feedback),
                                       other.with_feedback)
            comparisons.append({"arms": [base.arm, other.arm],
                                "accuracy_difference": other.accuracy - base.accuracy,
                                "z": z, "p_value": p})
    return {"route": route, "arms": [f.to_dict() for f in figures], "comparisons": comparisons}


def _arm_figures(arm: str, rows: list[dict[str, Any]]) -> ArmFigures:
    latencies = [float(r["latency_ms"]) for r in rows if r.get("latency_ms") is not None]
    unknown = [bool(r["unknown"]) for r in rows if r.get("unknown") is not None]
    judged = [r for r in rows if r.get("feedback") is not None]
    correct = sum(1 for r in judged if r["feedback"] == r["label"])
    return ArmFigures(
        arm=arm, requests=len(rows),
        latency_mean_ms=sum(latencies) / len(latencies) if latencies else None,
        latency_p95_ms=float(np.percentile(latencies, 95)) if latencies else None,
        unknown_rate=sum(unknown) / len(unknown) if unknown else None,
        with_feedback=len(judged), accuracy=correct / len(judged) if judged else None)


def two_proportion_test(successes_a: int, n_a: int, successes_b: int, n_b: int
                        ) -> tuple[float | None, float | None]:
    """Two-sided z-test of p_a = p_b with the pooled proportion; (z, p-value), or Nones when
    either arm has no trials or the pooled proportion is 0 or 1 (no variance)."""
    if n_a == 0 or n_b == 0:
        return None, None
    pooled = (successes_a + successes_b) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if variance <= 0:
        return None, None
    z = (successes_b / n_b - successes_a / n_a) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2))
