"""Validated updates over real HTTP: admin auth, validation, shadow, canary, promote under load,
automatic rollback on a latency or accuracy regression, rollback by hand."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from tests.serve.test_serve_http import config, png_bytes, predict, wait_ready  # noqa: E402

from vitkit.serve.served import ServedModel  # noqa: E402
from vitkit.serve.server import BackgroundServer  # noqa: E402

TOKEN = "s3cret-token-of-24-chars"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
FAST_ROLLOUT = {"shadow_share": 1.0, "shadow_requests": 6, "canary_share": 0.5,
                "canary_requests": 10, "latency_factor": 20.0, "reference_images": 20}


def new_version(bundle: Path, target: Path, **changes: Any) -> Path:
    """A copy of ``bundle`` that is another version (its vitkit.json differs)."""
    shutil.copytree(bundle, target)
    meta = json.loads((target / "vitkit.json").read_text())
    meta.setdefault("notes", []).append(f"retrained {time.time()}")
    meta.update(changes)
    (target / "vitkit.json").write_text(json.dumps(meta))
    return target


@pytest.fixture
def admin_server(trained_bundles: dict[str, Path], tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
                 ) -> Iterator[tuple[str, Any]]:
    monkeypatch.setenv("VITKIT_ADMIN_TOKEN", TOKEN)
    rollout = {**FAST_ROLLOUT, **getattr(request, "param", {})}
    bundles = {"a": Path(shutil.copytree(trained_bundles["cnn"], tmp_path / "a"))}
    cfg = config(bundles, tmp_path, routes={"default": [{"model": "a"}]}, fallback=[],
                 rollout=rollout)
    background = BackgroundServer(cfg)
    with background as url:
        wait_ready(url)
        yield url, background.service


def wait_state(url: str, states: set[str], timeout: float = 60,
               sent: list[int] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    image = png_bytes(Image.new("RGB", (48, 48), (215, 45, 40)))
    while time.monotonic() < deadline:
        rollout = httpx.get(f"{url}/v1/models", headers=ADMIN).json()["models"][0].get(
            "rollout", {})
        if rollout.get("state") in states:
            return rollout
        status = predict(url, [image]).status_code  # traffic drives shadow and canary
        if sent is not None:
            sent.append(status)
    raise AssertionError(f"rollout never reached {states}")


def test_admin_endpoints_need_the_token(trained_bundles: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VITKIT_ADMIN_TOKEN", raising=False)
    with BackgroundServer(config({"a": trained_bundles["cnn"]}, tmp_path, fallback=[])) as url:
        off = httpx.post(f"{url}/admin/models/a/rollback", headers=ADMIN)
        assert off.status_code == 403 and off.json()["error"] == "admin disabled"
    monkeypatch.setenv("VITKIT_ADMIN_TOKEN", TOKEN)
    with BackgroundServer(config({"a": trained_bundles["cnn"]}, tmp_path, fallback=[])) as url:
        assert httpx.post(f"{url}/admin/models/a/rollback").status_code == 401
        wrong = httpx.post(f"{url}/admin/models/a/rollback",
                           headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        assert httpx.post(f"{url}/admin/models/a/rollback", headers=ADMIN).status_code == 404


def test_incompatible_candidate_is_rejected(admin_server: tuple[str, Any],
                                            trained_bundles: dict[str, Path],
                                            tmp_path: Path) -> None:
    url, _ = admin_server
    labels = json.loads((trained_bundles["cnn"] / "vitkit.json").read_text())["labels"]
    other = new_version(trained_bundles["cnn"], tmp_path / "other", labels=labels[::-1])
    response = httpx.post(f"{url}/admin/models/a/candidate", json={"bundle": str(other)},
                          headers=ADMIN, timeout=60)
    assert response.status_code == 409 and "labels" in response.json()["detail"]
    missing = httpx.post(f"{url}/admin/models/a/candidate",
                         json={"bundle": str(tmp_path / "nope")}, headers=ADMIN, timeout=60)
    assert missing.status_code == 422
    assert httpx.get(f"{url}/v1/models").json()["models"][0]["rollout"]["state"] == "rejected"


def test_a_candidate_that_measures_worse_is_rejected(trained_bundles: dict[str, Path],
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The live bundle sits in its run folder, so both are re-measured on its val split."""
    import torch
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("VITKIT_ADMIN_TOKEN", TOKEN)
    run = Path(shutil.copytree(trained_bundles["cnn"].parent, tmp_path / "run"))
    broken = new_version(run / "bundle", tmp_path / "broken")
    weights = load_file(str(broken / "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    save_file({k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
               for k, v in weights.items()}, str(broken / "model.safetensors"))
    cfg = config({"a": run / "bundle"}, tmp_path, fallback=[],
                 rollout={**FAST_ROLLOUT, "max_drop": 0.05})
    with BackgroundServer(cfg) as url:
        wait_ready(url)
        response = httpx.post(f"{url}/admin/models/a/candidate", json={"bundle": str(broken)},
                              headers=ADMIN, timeout=120)
        assert response.status_code == 409, response.text
        assert "reference images" in response.json()["detail"]
        rollout = httpx.get(f"{url}/v1/models").json()["models"][0]["rollout"]
        reference = rollout["validation"]["reference"]
        assert reference["n"] > 0 and reference["candidate"] < reference["live"] - 0.05


def test_promote_under_load_drops_nothing_then_rollback_by_hand(
        admin_server: tuple[str, Any], trained_bundles: dict[str, Path], tmp_path: Path) -> None:
    url, service = admin_server
    live_version = service.models["a"].version
    candidate = new_version(trained_bundles["cnn"], tmp_path / "candidate")
    image = png_bytes(Image.new("RGB", (48, 48), (40, 190, 70)))
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(f"{url}/v1/predict",
                                       files={"files": ("x.png", image, "image/png")})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.append(response.json()["predictions"][0]["version"])

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        started = httpx.post(f"{url}/admin/models/a/candidate",
                             json={"bundle": str(candidate)}, headers=ADMIN, timeout=120)
        assert started.status_code == 202, started.text
        assert started.json()["state"] == "shadow"
        assert started.json()["validation"]["reference"] is None or \
            started.json()["validation"]["reference"]["n"] > 0
        rollout = wait_state(url, {"promoted", "rolled back"}, sent=statuses)
        time.sleep(0.3)  # some traffic after the swap
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert rollout["state"] == "promoted", rollout["history"]
    assert [h["to"] for h in rollout["history"]] == ["shadow", "canary", "promoted"]
    assert set(statuses) == {200}, "no request lost or refused through the swap"
    new = service.models["a"].version
    assert new != live_version and versions[-1] == new and live_version in versions
    assert len(service.log.rows()) == len(statuses), "every answer logged"

    back = httpx.post(f"{url}/admin/models/a/rollback", headers=ADMIN)
    assert back.status_code == 200
    assert service.models["a"].version == live_version
    answer = predict(url, [image]).json()["predictions"][0]
    assert answer["version"] == live_version


def _slowed(model: ServedModel, seconds: float) -> None:
    infer = ServedModel.infer.__get__(model)
    model.infer = lambda batch: (time.sleep(seconds), infer(batch))[1]  # type: ignore[method-assign]


@pytest.mark.parametrize("admin_server", [{"latency_factor": 3.0, "shadow_requests": 0}],
                         indirect=True)
def test_a_slower_candidate_is_rolled_back_automatically(
        admin_server: tuple[str, Any], trained_bundles: dict[str, Path], tmp_path: Path) -> None:
    url, service = admin_server
    live_version = service.models["a"].version
    candidate = new_version(trained_bundles["cnn"], tmp_path / "slow")
    started = httpx.post(f"{url}/admin/models/a/candidate", json={"bundle": str(candidate)},
                         headers=ADMIN, timeout=120)
    assert started.status_code == 202 and started.json()["state"] == "canary"
    _slowed(service.candidates["a"].model, 0.6)  # a regression the validation did not see
    rollout = wait_state(url, {"promoted", "rolled back"})
    assert rollout["state"] == "rolled back"
    assert "p95 latency" in rollout["history"][-1]["reason"]
    assert service.models["a"].version == live_version


def test_a_candidate_that_disagrees_is_rolled_back_in_shadow(
        admin_server: tuple[str, Any], trained_bundles: dict[str, Path], tmp_path: Path) -> None:
    url, service = admin_server
    candidate = new_version(trained_bundles["cnn"], tmp_path / "wrong")
    started = httpx.post(f"{url}/admin/models/a/candidate", json={"bundle": str(candidate)},
                         headers=ADMIN, timeout=120)
    assert started.status_code == 202
    model = service.candidates["a"].model
    infer = ServedModel.infer.__get__(model)
    model.infer = lambda batch: [{**a, "label": "something else"}  # type: ignore[method-assign]
                                 for a in infer(batch)]
    rollout = wait_state(url, {"canary", "promoted", "rolled back"})
    assert rollout["state"] == "rolled back"
    assert "agreement" in rollout["history"][-1]["reason"]


def test_deploy_and_rollback_from_the_command_line(admin_server: tuple[str, Any],
                                                   trained_bundles: dict[str, Path],
                                                   tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    url, service = admin_server
    candidate = new_version(trained_bundles["cnn"], tmp_path / "cli")
    env = {**os.environ, "VITKIT_ADMIN_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"}

    def vitkit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vitkit", "serve", *args], env=env,
                              capture_output=True, text=True, timeout=300, check=False)

    deployed = vitkit("deploy", url, "a", str(candidate), "--json")
    assert deployed.returncode == 0, deployed.stderr
    assert json.loads(deployed.stdout)["state"] == "shadow"
    assert service.rollouts["a"].state == "shadow"
    back = vitkit("rollback", url, "a")
    assert back.returncode == 0 and "rolled back" in back.stderr
    refused = subprocess.run([sys.executable, "-m", "vitkit", "serve", "rollback", url, "a"],
                             env={**env, "VITKIT_ADMIN_TOKEN": "wrong"}, capture_output=True,
                             text=True, timeout=300, check=False)
    assert refused.returncode == 2 and "403" in refused.stderr
