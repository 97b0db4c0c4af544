"""Faults in the serving parts, without HTTP: the breaker's half-open trial, the request log
when its database goes away, the state file, the admin guard, config checks."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from vitkit.errors import ConfigError  # noqa: E402
from vitkit.serve.ab import ab_report  # noqa: E402
from vitkit.serve.auth import AdminGuard, check_token  # noqa: E402
from vitkit.serve.batcher import MicroBatcher  # noqa: E402
from vitkit.serve.config import ServeConfig, serve_config  # noqa: E402
from vitkit.serve.errors import HttpProblem  # noqa: E402
from vitkit.serve.log import RequestLog  # noqa: E402
from vitkit.serve.router import CircuitBreaker  # noqa: E402
from vitkit.serve.state import BundleRef, StateStore  # noqa: E402


def row(i: int, **extra: Any) -> dict[str, Any]:
    return {"request_id": f"r{i}", "time": time.time(), "route": "default", "model": "m",
            "version": "v1", "arm": "m", "label": "x", "score": 0.9, "unknown": False,
            "latency_ms": 1.0, "fallback_from": None, **extra}


# ------------------------------------------------------------------ circuit breaker
def test_a_half_open_trial_that_meets_a_full_queue_frees_the_trial() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=1, cooldown_s=10, clock=lambda: now[0])
    breaker.failure()
    now[0] = 11.0
    assert breaker.allow(), "the half-open trial"
    breaker.release()  # the trial's request met a full queue: no verdict on the model
    assert breaker.allow(), "the next request may try (before the fix: locked out for good)"
    breaker.success()
    assert breaker.state == "closed"


# ------------------------------------------------------------------ request log
class FlakyDatabase:
    """Makes a RequestLog's inserts fail while ``down`` is set (an outage)."""

    def __init__(self, log: RequestLog) -> None:
        self.down = threading.Event()
        real = log._insert

        def insert(rows: list[dict[str, Any]]) -> None:
            if self.down.is_set():
                raise ConnectionError("injected: the database is down")
            real(rows)

        log._insert = insert  # type: ignore[method-assign]


def test_the_log_writer_survives_an_outage_and_loses_nothing(tmp_path: Path) -> None:
    log = RequestLog(f"sqlite:///{tmp_path / 'log.db'}", flush_ms=10, max_memory_rows=50,
                     spill_path=tmp_path / "spill.jsonl")
    database = FlakyDatabase(log)
    try:
        for i in range(20):
            log.add(row(i))
        assert log.flush(5) and log.written == 20
        database.down.set()
        for i in range(20, 220):
            log.add(row(i))
        deadline = time.monotonic() + 10
        while log.healthy and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(4.0)  # longer than the old writer's five retries (~3 s)
        assert not log.healthy and "injected" in (log.last_error or "")
        assert log.backlog == 200, "held in memory (50) and the spill file (150)"
        assert (tmp_path / "spill.jsonl").is_file()
        assert log._writer.is_alive(), "the writer never gives up"
        database.down.clear()
        assert log.flush(15), log.status()
        assert log.healthy and log.backlog == 0
        assert not (tmp_path / "spill.jsonl").exists()
        ids = {r["request_id"] for r in log.rows()}
        assert ids == {f"r{i}" for i in range(220)}
    finally:
        log.close()


def test_rows_spilled_at_a_stop_are_written_by_the_next_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = RequestLog(url, flush_ms=10, spill_path=tmp_path / "spill.jsonl")
    FlakyDatabase(log).down.set()
    for i in range(30):
        log.add(row(i))
    log.close(timeout=0.5)  # the database never came back before the stop
    assert len((tmp_path / "spill.jsonl").read_text().splitlines()) == 30
    again = RequestLog(url, flush_ms=10, spill_path=tmp_path / "spill.jsonl")
    try:
        assert again.backlog == 30
        assert again.flush(10)
        assert len(again.rows()) == 30 and not (tmp_path / "spill.jsonl").exists()
    finally:
        again.close()


def test_a_replayed_batch_is_written_once(tmp_path: Path) -> None:
    log = RequestLog(f"sqlite:///{tmp_path / 'log.db'}", flush_ms=10,
                     spill_path=tmp_path / "spill.jsonl")
    try:
        for i in range(5):
            log.add(row(i))
        assert log.flush(5)
        log._insert([row(i) for i in range(5)])  # a retry after a lost acknowledgement
        assert len(log.rows()) == 5
    finally:
        log.close()


def test_feedback_is_checked_and_never_silently_overwritten(tmp_path: Path) -> None:
    log = RequestLog(f"sqlite:///{tmp_path / 'log.db'}", flush_ms=10,
                     spill_path=tmp_path / "spill.jsonl")
    try:
        log.add(row(1))
        assert log.feedback("r1", "x") == "recorded"
        assert log.feedback("r1", "x") == "recorded", "the same label again is fine"
        assert log.feedback("r1", "y") == "conflict"
        assert log.rows()[0]["feedback"] == "x"
        assert log.feedback("r1", "y", replace=True) == "recorded"
        assert log.rows()[0]["feedback"] == "y"
        assert log.feedback("nope", "x") == "unknown"
    finally:
        log.close()


def test_ab_report_keeps_versions_and_the_canary_apart() -> None:
    rows = ([row(i, arm="a", version="v1", feedback="x") for i in range(10)]
            + [row(10 + i, arm="a", version="v2", feedback="y") for i in range(4)]
            + [row(20 + i, arm="a:canary", version="v2") for i in range(3)])
    arms = {a["arm"]: a for a in ab_report(rows)["arms"]}
    assert set(arms) == {"a@v1", "a@v2", "a:canary"}
    assert arms["a@v1"]["accuracy"] == 1.0 and arms["a@v2"]["accuracy"] == 0.0


# ------------------------------------------------------------------ state file
def test_the_state_file_survives_and_yields_to_an_edited_config(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture
                                                                ) -> None:
    path = tmp_path / "state.json"
    configured = BundleRef(str(tmp_path / "a"), None)
    store = StateStore(path)
    store.record("m", configured, BundleRef(str(tmp_path / "b"), "torch-fp32", "v2"),
                 BundleRef(str(tmp_path / "a"), "torch-fp32", "v1"),
                 {"started": 1.0, "state": "promoted", "history": []})
    again = StateStore(path)
    kept = again.restorable("m", configured)
    assert kept is not None and kept.live.version == "v2" and kept.previous is not None
    assert kept.rollouts[-1]["state"] == "promoted"
    with caplog.at_level(logging.WARNING, "vitkit.serve"):
        assert again.restorable("m", BundleRef(str(tmp_path / "c"), None)) is None
    assert "dropped" in caplog.text
    path.write_text("{not json")
    with caplog.at_level(logging.ERROR, "vitkit.serve"):
        assert StateStore(path).models == {}
    assert "unreadable" in caplog.text


# ------------------------------------------------------------------ admin guard
def test_admin_tokens_must_be_long_and_failures_are_rate_limited(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from vitkit.serve.app import create_app

    monkeypatch.setenv("VITKIT_ADMIN_TOKEN", "short")
    with pytest.raises(ConfigError, match="at least 16"):  # at start-up, not at first use
        create_app(ServeConfig.model_validate({"models": [{"name": "m", "bundle": "x"}],
                                               "log": {"url": None}}))
    with pytest.raises(ConfigError, match="at least 16"):
        check_token("short", "VITKIT_ADMIN_TOKEN")
    check_token(None, "VITKIT_ADMIN_TOKEN")  # admin off is fine
    now = [0.0]
    guard = AdminGuard("t" * 24, "VITKIT_ADMIN_TOKEN", max_failures=3, window_s=60,
                       clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(HttpProblem) as wrong:
            guard.check("Bearer nope", "10.0.0.1")
        assert wrong.value.status == 403
    with pytest.raises(HttpProblem) as limited:
        guard.check(f"Bearer {'t' * 24}", "10.0.0.1")
    assert limited.value.status == 429 and limited.value.headers == {"Retry-After": "61"}
    guard.check(f"Bearer {'t' * 24}", "10.0.0.2")  # another client is not affected
    now[0] = 61.0
    guard.check(f"Bearer {'t' * 24}", "10.0.0.1")  # the window has passed


# ------------------------------------------------------------------ config
def test_relative_paths_in_a_yaml_config_are_read_from_its_folder(
        trained_bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    folder = tmp_path / "deploy"
    folder.mkdir()
    (folder / "models").symlink_to(trained_bundles["cnn"].parent)
    (folder / "serve.yaml").write_text(
        "models: [{name: m, bundle: models/bundle}]\nlog: {url: sqlite:///requests.db}\n"
        "state_file: state.json\nbundle_roots: [candidates]\n")
    monkeypatch.chdir(tmp_path)  # anywhere but the config's folder
    config = serve_config(Path("deploy/serve.yaml"))  # relative to the current folder
    assert Path(config.models[0].bundle) == folder.resolve() / "models" / "bundle"
    assert Path(config.models[0].bundle, "vitkit.json").is_file()
    assert config.log.url == f"sqlite:///{folder.resolve() / 'requests.db'}"
    assert config.state_file == str(folder.resolve() / "state.json")
    assert config.bundle_roots == [str(folder.resolve() / "candidates")]


def test_a_request_the_queue_can_never_hold_is_refused_when_configured() -> None:
    with pytest.raises(ValueError, match="max_images"):
        ServeConfig.model_validate({"models": [{"name": "m", "bundle": "x"}],
                                    "batching": {"max_queue": 4},
                                    "limits": {"max_images": 8}})


def test_a_request_as_large_as_the_queue_is_answered_on_an_idle_batcher() -> None:
    async def main() -> list[int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(lambda xs: [2 * x for x in xs],
                                                       max_batch=2, max_queue=4)
        batcher.start()
        try:
            return list(await asyncio.gather(*[batcher.submit(i) for i in range(4)]))
        finally:
            await batcher.stop()

    assert asyncio.run(main()) == [0, 2, 4, 6]


def test_state_file_json_is_written_atomically(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.record("m", BundleRef("a", None), BundleRef("a", None, "v1"), None)
    document = json.loads((tmp_path / "state.json").read_text())
    assert document["schema"] == 1 and document["models"]["m"]["live"]["version"] == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"], "no temporary file left"
