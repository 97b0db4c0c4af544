"""Timing and memory primitives: latency and throughput of a callable, peak resident memory.

Every measurement is time-bounded: warm-up runs first (allocators, thread pools, one-off graph
optimisations), then timed runs until both ``min_runs`` and ``min_seconds`` are reached, never
more than ``max_runs`` or ``max_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class Budget:
    """How long to measure. The defaults suit a laptop CPU; tests shrink them."""

    warmup_runs: int = 3
    min_runs: int = 20
    min_seconds: float = 2.0
    max_runs: int = 500
    max_seconds: float = 10.0
    throughput_min_runs: int = 3
    throughput_min_seconds: float = 1.0
    throughput_max_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.min_runs < 1 or self.max_runs < self.min_runs or self.throughput_min_runs < 1:
            raise ValueError(f"inconsistent run counts in {self}")


QUICK = Budget(warmup_runs=1, min_runs=2, min_seconds=0.0, max_runs=3, max_seconds=1.0,
               throughput_min_runs=1, throughput_min_seconds=0.0, throughput_max_seconds=1.0)


@dataclass(frozen=True)
class Latency:
    """Milliseconds per call over ``runs`` timed calls."""

    mean: float
    p50: float
    p95: float
    runs: int

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "p50": self.p50, "p95": self.p95}


def _timed_runs(fn: Callable[[], object], warmup: int, min_runs: int, min_seconds: float,
                max_runs: int, max_seconds: float) -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if len(times) >= min_runs and (elapsed >= min_seconds or elapsed >= max_seconds):
            break
    return times


def measure_latency(model: Callable[[torch.Tensor], torch.Tensor], sample: torch.Tensor,
                    budget: Budget) -> Latency:
    """Per-call latency of ``model(sample)`` (use a batch of one for per-image latency)."""
    times = _timed_runs(lambda: model(sample), budget.warmup_runs, budget.min_runs,
                        budget.min_seconds, budget.max_runs, budget.max_seconds)
    ms = np.asarray(times) * 1000.0
    return Latency(round(float(ms.mean()), 3), round(float(np.percentile(ms, 50)), 3),
                   round(float(np.percentile(ms, 95)), 3), len(times))


def measure_throughput(model: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
                       budget: Budget) -> float:
    """Images per second over whole batches: total images / total time of the timed calls."""
    times = _timed_runs(lambda: model(batch), 1, budget.throughput_min_runs,
                        budget.throughput_min_seconds, budget.max_runs,
                        budget.throughput_max_seconds)
    return round(len(batch) * len(times) / sum(times), 2)


class PeakRss:
    """Growth of the process's peak resident memory (Linux ``VmHWM``) inside a ``with``.

    Entering resets the kernel's high-water mark (``/proc/self/clear_refs``) and notes the
    current RSS; ``mb`` is then ``peak - start`` in MiB: what loading and running the variant
    added at its worst, native memory included (``tracemalloc`` would miss ONNX Runtime's and
    OpenVINO's). Memory the allocator reuses from an earlier variant is not counted again, so
    treat small differences with care. ``mb`` is None where the kernel offers no such counter.
    """

    def __init__(self) -> None:
        self.mb: float | None = None
        self._start: int | None = None

    def __enter__(self) -> PeakRss:
        try:
            _CLEAR_REFS.write_text("5")
            self._start = _status_kib("VmRSS")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is None:
            return
        try:
            peak = _status_kib("VmHWM")
        except OSError:
            return
        self.mb = round(max(0, peak - self._start) / 1024.0, 1)


def _status_kib(field: str) -> int:
    for line in _PROC_STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in {_PROC_STATUS}")
