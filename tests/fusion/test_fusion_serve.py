"""An image + audio bundle behind the real service (uvicorn on a loopback port): a pair, a
recording alone or an image alone answered with label, score and which inputs it had; bad
audio and audio for an image-only model refused with 4xx; the request log keeps each answer."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.fusion.conftest import PITCHES, RATE, bar_image, tone
from tests.serve.test_serve_http import wait_ready

from vitkit.data.audio import wav_bytes

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from vitkit.serve.config import ServeConfig  # noqa: E402
from vitkit.serve.server import BackgroundServer  # noqa: E402


def _png(index: int) -> bytes:
    buffer = io.BytesIO()
    bar_image(index, np.random.default_rng(index)).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav(index: int) -> bytes:
    return wav_bytes(tone(PITCHES[index], 0.4, np.random.default_rng(index)), RATE)


def _classifier_bundle(folder: Path) -> Path:
    from vitkit.backbones import create
    from vitkit.bundle import BundleMeta, save_bundle

    created = create("test_resnet", 2, "none")
    return save_bundle(folder / "classifier", created.model.model, BundleMeta(
        backbone=created.spec.to_dict(), labels=["a", "b"],
        preprocessing=created.preprocessing.model_dump(mode="json")))


@pytest.fixture(scope="module")
def fusion_server(fusion_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("serve-fusion")
    config = ServeConfig.model_validate({
        "models": [{"name": "fz", "bundle": str(fusion_bundle)},
                   {"name": "cls", "bundle": str(_classifier_bundle(folder))}],
        "routes": {"default": [{"model": "fz"}], "images": [{"model": "cls"}]},
        "log": {"url": f"sqlite:///{folder / 'log.db'}", "flush_ms": 20},
        "state_file": str(folder / "state.json"),
    })
    with BackgroundServer(config) as url:
        wait_ready(url, timeout=120)
        yield url, folder / "log.db"


def _predict(url: str, files: list[tuple[str, tuple[str, bytes, str]]], route: str = ""
             ) -> Any:
    return httpx.post(f"{url}/v1/predict" + (f"?route={route}" if route else ""),
                      files=files, timeout=60)


def test_a_pair_a_recording_alone_and_an_image_alone_are_answered(fusion_server: Any) -> None:
    url, log = fusion_server
    image = ("image", ("seven.png", _png(0), "image/png"))
    audio = ("audio", ("seven.wav", _wav(0), "audio/wav"))
    answers = {}
    for modality, files in (("both", [image, audio]), ("audio", [audio]),
                            ("image", [("files", ("seven.png", _png(0), "image/png"))])):
        response = _predict(url, files)
        assert response.status_code == 200, response.text
        (answer,) = response.json()["predictions"]
        assert answer["kind"] == "fusion" and answer["model"] == "fz"
        assert answer["modality"] == modality and answer["label"] in {"c0", "c1", "c2"}
        assert 0.0 <= answer["score"] <= 1.0 and answer["topk"][0]["label"] == answer["label"]
        answers[modality] = answer
    assert (answers["both"]["image"], answers["both"]["audio"]) == ("seven.png", "seven.wav")
    assert answers["audio"]["image"] is None and answers["image"]["image"] == "seven.png"
    ids = {a["request_id"] for a in answers.values()}
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(log) as db:
            logged = {row[0]: (row[1], row[2]) for row in db.execute(
                "SELECT request_id, label, score FROM predictions")}
        if ids <= set(logged) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for answer in answers.values():
        label, score = logged[answer["request_id"]]
        assert label == answer["label"] and score == pytest.approx(answer["score"])


def test_bad_audio_and_audio_for_an_image_model_are_refused(fusion_server: Any) -> None:
    url, _ = fusion_server
    not_wav = _predict(url, [("audio", ("a.wav", b"this is not a recording at all", "audio/wav"))])
    assert not_wav.status_code == 415 and "not a WAV file" in not_wav.json()["detail"]
    short = _predict(url, [("audio", ("a.wav", wav_bytes(np.zeros(20), RATE), "audio/wav"))])
    assert short.status_code == 422 and "too short" in short.json()["detail"]
    two = _predict(url, [("audio", ("a.wav", _wav(1), "audio/wav")),
                         ("audio", ("b.wav", _wav(2), "audio/wav"))])
    assert two.status_code == 422 and "one example" in two.json()["detail"]
    refused = _predict(url, [("audio", ("a.wav", _wav(1), "audio/wav"))], route="images")
    assert refused.status_code == 422, refused.text
    assert "takes audio" in refused.json()["detail"]
    images = _predict(url, [("files", ("a.png", _png(1), "image/png"))], route="images")
    assert images.status_code == 200 and images.json()["predictions"][0]["kind"] == "classify"


def test_v2_answers_an_image_with_the_modality_output(fusion_server: Any) -> None:
    url, _ = fusion_server
    metadata = httpx.get(f"{url}/v2/models/fz", timeout=30).json()
    assert "modality" in {o["name"] for o in metadata["outputs"]}
    image = base64.b64encode(_png(2)).decode("ascii")
    response = httpx.post(f"{url}/v2/models/fz/infer", timeout=60, json={
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}]})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["modality"] == ["image"] or json.loads(outputs["modality"][0]) == "image"
    assert outputs["label"][0] in {"c0", "c1", "c2"}
