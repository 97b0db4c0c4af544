"""The serving parts without HTTP: arms, circuit breaker, micro-batcher, A/B statistics, config."""

from __future__ import annotations

import asyncio
import math
import random
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from vitkit.errors import ConfigError  # noqa: E402
from vitkit.serve.ab import ab_report, two_proportion_test  # noqa: E402
from vitkit.serve.batcher import MicroBatcher, Overloaded  # noqa: E402
from vitkit.serve.config import Arm, serve_config  # noqa: E402
from vitkit.serve.router import CircuitBreaker, choose_arm  # noqa: E402


def test_arms_are_sticky_per_user_and_split_by_weight() -> None:
    arms = [Arm(model="a", weight=3), Arm(model="b", weight=1)]
    users = [f"user-{i}" for i in range(4000)]
    first = [choose_arm(arms, u, "r").model for u in users]
    assert first == [choose_arm(arms, u, "r").model for u in users], "sticky"
    share = first.count("a") / len(first)
    assert abs(share - 0.75) < 0.03  # binomial sd 0.007
    rng = random.Random(1)
    anonymous = [choose_arm(arms, None, "r", rng).model for _ in range(4000)]
    assert abs(anonymous.count("a") / 4000 - 0.75) < 0.03
    other_route = [choose_arm(arms, u, "other").model for u in users]
    assert other_route != first, "each route splits users independently"


def test_circuit_breaker_opens_then_tries_once_after_the_cooldown() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, cooldown_s=10, clock=lambda: now[0])
    breaker.failure()
    assert breaker.allow() and breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.5
    assert breaker.state == "half-open"
    assert breaker.allow() and not breaker.allow(), "one trial request"
    breaker.failure()
    assert breaker.state == "open", "a failed trial opens it again"
    now[0] = 21.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


def test_micro_batcher_groups_concurrent_requests_and_bounds_its_queue() -> None:
    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        time.sleep(0.05)
        return [2 * i for i in items]

    async def main() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=8, max_wait_ms=20,
                                                       max_queue=64, on_batch=sizes.append)
        batcher.start()
        results = await asyncio.gather(*[batcher.submit(i) for i in range(20)])
        assert results == [2 * i for i in range(20)]
        await batcher.stop()

        small: MicroBatcher[int, int] = MicroBatcher(run, max_batch=1, max_wait_ms=0,
                                                     max_queue=2)
        small.start()
        outcomes = await asyncio.gather(*[small.submit(i) for i in range(6)],
                                        return_exceptions=True)
        assert any(isinstance(o, Overloaded) for o in outcomes), "a full queue refuses at once"
        await small.stop()

    asyncio.run(main())
    assert max(sizes) == 8 and sum(sizes) == 20 and len(sizes) <= 4


def test_two_proportion_test_matches_a_hand_computation() -> None:
    # 80/100 vs 90/100: pooled 0.85, se = sqrt(.85 * .15 * .02) = 0.0505, z = 1.980
    z, p = two_proportion_test(80, 100, 90, 100)
    assert z == pytest.approx(0.1 / math.sqrt(0.85 * 0.15 * 0.02))
    assert p == pytest.approx(0.0477, abs=5e-4)
    assert two_proportion_test(5, 5, 3, 3) == (None, None)
    assert two_proportion_test(0, 0, 3, 4) == (None, None)


def test_ab_report_figures() -> None:
    rows = ([{"arm": "a", "route": "r", "label": "x", "latency_ms": float(i), "unknown": i == 0,
              "feedback": "x" if i < 8 else ("y" if i < 10 else None)} for i in range(20)]
            + [{"arm": "b", "route": "r", "label": "x", "latency_ms": 5.0, "unknown": False,
                "feedback": "x"} for _ in range(4)])
    report = ab_report(rows, "r")
    a, b = report["arms"]
    assert (a["arm"], a["requests"], a["with_feedback"], a["accuracy"]) == ("a", 20, 10, 0.8)
    assert a["unknown_rate"] == 0.05 and a["latency_mean_ms"] == 9.5
    assert a["latency_p95_ms"] == pytest.approx(18.05)
    assert b["accuracy"] == 1.0
    comparison = report["comparisons"][0]
    assert comparison["arms"] == ["a", "b"]
    assert comparison["p_value"] == pytest.approx(two_proportion_test(8, 10, 4, 4)[1])


def test_serve_config_from_a_bundle_or_yaml(trained_bundles: dict[str, Path],
                                            tmp_path: Path) -> None:
    single = serve_config(trained_bundles["cnn"])
    assert [m.name for m in single.models] == [Path(trained_bundles["cnn"]).parent.name]
    assert list(single.routes) == ["default"]
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"models: [{{name: a, bundle: {trained_bundles['cnn']}}}]\n"
                    "batching: {max_btach: 4}\n")
    with pytest.raises(ConfigError, match="Did you mean 'max_batch'"):
        serve_config(typo)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(f"models: [{{name: a, bundle: {trained_bundles['cnn']}}}]\n"
                     "routes: {default: [{model: b}]}\n")
    with pytest.raises(ConfigError, match="names model 'b'"):
        serve_config(wrong)
    with pytest.raises(ConfigError, match="does not exist"):
        serve_config(tmp_path / "nope")
    in_a_list = tmp_path / "list.yaml"
    in_a_list.write_text(f"models: [{{nmae: a, bundle: {trained_bundles['cnn']}}}]\n")
    with pytest.raises(ConfigError, match="models.0.nmae'. Did you mean 'name'"):
        serve_config(in_a_list)
