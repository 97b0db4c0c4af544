"""The request log: every answered image, and the feedback that later names its true label.

SQLAlchemy, so a SQLite file (the default, in WAL mode) and a PostgreSQL URL work the same.
Rows are queued by the request path and written in batches by one background thread: a slow
disk never slows an answer, and :meth:`RequestLog.close` writes what is still queued.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

metadata = MetaData()
predictions = Table(
    "predictions", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("time", Float, nullable=False),
    Column("route", String(128)),
    Column("model", String(128), nullable=False),
    Column("version", String(64)),
    Column("arm", String(128)),
    Column("label", String(256)),
    Column("score", Float),
    Column("unknown", Boolean),
    Column("latency_ms", Float),
    Column("fallback_from", String(128)),
    Column("feedback", String(256)),
    Column("feedback_time", Float),
)


def make_engine(url: str) -> Engine:
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _wal(connection: Any, _record: Any) -> None:  # readers never block the writer
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()
    metadata.create_all(engine)
    return engine


class RequestLog:
    def __init__(self, url: str, flush_ms: float = 200.0, batch: int = 512) -> None:
        self.engine = make_engine(url)
        self.flush_s = flush_ms / 1000
        self.batch = batch
        self._rows: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.written = 0
        self._writer = threading.Thread(target=self._write_loop, name="vitkit-request-log",
                                        daemon=True)
        self._writer.start()

    def add(self, row: dict[str, Any]) -> None:
        """Queues one row (never blocks the caller)."""
        self._rows.put(row)

    def feedback(self, request_id: str, label: str) -> bool:
        """Records the true label of an answered image; False when the id is unknown. Waits for
        queued rows first, so feedback right after the answer finds its row."""
        self.flush()
        with self.engine.begin() as connection:
            result = connection.execute(
                update(predictions).where(predictions.c.request_id == request_id)
                .values(feedback=label, feedback_time=time.time()))
        return result.rowcount > 0

    def flush(self, timeout: float = 10.0) -> None:
        """Returns when every row queued so far is written."""
        done = threading.Event()
        self._rows.put({"__flush__": done})
        done.wait(timeout)

    def close(self) -> None:
        self._rows.put(None)
        self._writer.join(timeout=30)
        self.engine.dispose()

    def rows(self) -> list[dict[str, Any]]:
        self.flush()
        with self.engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(select(predictions))]

    def _write_loop(self) -> None:
        while True:
            first = self._rows.get()
            pending = [first]
            deadline = time.monotonic() + self.flush_s
            while len(pending) < self.batch and first is not None:
                try:
                    pending.append(self._rows.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
                if pending[-1] is None or "__flush__" in (pending[-1] or {}):
                    break
            rows = [r for r in pending if r is not None and "__flush__" not in r]
            if rows:
                self._insert(rows)
            for marker in pending:
                if marker is not None and "__flush__" in marker:
                    marker["__flush__"].set()
            if any(r is None for r in pending):
                return

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        for attempt in range(5):
            try:
                with self.engine.begin() as connection:
                    connection.execute(insert(predictions), rows)
                self.written += len(rows)
                return
            except Exception:  # noqa: BLE001 - a locked or restarting database: retry
                time.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"could not write {len(rows)} request-log rows")


# ----------------------------------------------------------------------------- A/B report
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
    each arm's accuracy against the first arm's (the one with the most requests)."""
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if route is not None and row.get("route") != route:
            continue
        by_arm.setdefault(str(row.get("arm") or row.get("model")), []).append(row)
    figures = [_arm_figures(arm, members) for arm, members in by_arm.items()]
    figures.sort(key=lambda f: -f.requests)
    comparisons = []
    if figures and figures[0].accuracy is not None:
        base = figures[0]
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
