"""The request log on a real PostgreSQL server, started here on a local socket
(``postgres_url`` in conftest.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("psycopg")

from vitkit.serve.ab import ab_report  # noqa: E402
from vitkit.serve.log import RequestLog  # noqa: E402


def test_request_log_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    log = RequestLog(postgres_url, flush_ms=20, spill_path=tmp_path / "spill.jsonl")
    try:
        now = time.time()
        for i in range(50):
            log.add({"request_id": f"r{i}", "time": now, "route": "default", "model": "m",
                     "version": "v1", "arm": "a" if i % 2 else "b", "label": "x",
                     "score": 0.9, "unknown": False, "latency_ms": float(i),
                     "fallback_from": None})
        assert log.feedback("r3", "x") == log.feedback("r4", "y") == "recorded"
        assert log.feedback("missing", "x") == "unknown"
        rows = log.rows()
        assert len(rows) == 50 and log.written == 50
        report = ab_report(rows)
        assert {a["arm"]: a["with_feedback"] for a in report["arms"]} == {"a": 1, "b": 1}
    finally:
        log.close()
