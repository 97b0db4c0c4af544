"""`vitkit train|eval|predict` on a tiny image + audio manifest (three classes: a tone of its
own pitch and an image with a bar in its own place), end to end: train through the manifest
dispatch, eval with each --modality, predict one pair, one input alone and a manifest with
a broken recording, and the refusals of options that mean nothing here.

Training runs in a subprocess, as a user runs it; the other verbs run in this process through
the same entry point (``vitkit.cli.main``), which saves each subprocess's imports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tests.e2e.cli import run_cli
from tests.fusion.conftest import write_paired_data

from vitkit.cli import main

pytestmark = pytest.mark.slow


def vitkit(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
           *args: object) -> tuple[int, str, str]:
    """``vitkit ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["vitkit", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = int(stop.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_fusion_train_eval_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = write_paired_data(tmp_path / "data", per_class=8)
    config = tmp_path / "fusion.yaml"
    config.write_text("num_workers: 0\nlr: 0.003\nimage_size: 32\naudio_width: 32\n"
                      "audio_heads: 2\ndim: 32\n")
    run = tmp_path / "run"
    done = run_cli("train", manifest, "--model", "test_resnet", "--weights", "none",
                   "--epochs", "3", "--batch-size", "8", "--out", run, "--config", config,
                   "--quiet", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["task"] == "fusion" and result["labels"] == ["c0", "c1", "c2"]
    assert (result["train_rows"], result["val_rows"], result["test_rows"]) == (12, 6, 6)
    assert result["epochs_run"] == 3 and set(result["by_modality"]["test"]) == {
        "both", "image", "audio"}
    bundle = Path(result["bundle"])
    meta = json.loads((bundle / "vitkit.json").read_text())
    assert meta["task"] == "fusion" and meta["fusion"]["audio"]["n_mels"] == 80
    assert meta["fusion"]["audio"]["sample_rate"] == 8000

    figures = {}
    for modality in ("both", "image", "audio"):
        code, out, err = vitkit(capsys, monkeypatch, "eval", bundle, manifest, "--modality",
                                modality, "--json", "--quiet")
        assert code == 0, err
        record = json.loads(out)
        assert (record["modality"], record["split"], record["n"]) == (modality, "test", 6)
        assert {"accuracy", "per_class", "confusion_matrix", "n_skipped"} <= set(record)
        figures[modality] = record["accuracy"]
    assert figures == result["by_modality"]["test"]
    assert figures["audio"] > 0.5  # three pitches, heard apart after three epochs (chance 1/3)

    data = tmp_path / "data"
    code, out, err = vitkit(capsys, monkeypatch, "predict", bundle, "--image",
                            data / "images/c1_0.png", "--audio", data / "audio/c1_0.wav",
                            "--json")
    assert code == 0, err
    (pair,) = json.loads(out)
    assert pair["modality"] == "both" and pair["label"] in result["labels"]
    assert pair["audio"].endswith("c1_0.wav") and 0 <= pair["score"] <= 1

    (data / "broken.wav").write_bytes(b"RIFF, but nothing after it")
    (data / "new.csv").write_text("image,audio\n,audio/c2_1.wav\nimages/c0_1.png,\n"
                                  ",broken.wav\n")
    code, out, err = vitkit(capsys, monkeypatch, "predict", bundle, data / "new.csv", "--json")
    assert code == 0, err
    alone_audio, alone_image, broken = json.loads(out)
    assert (alone_audio["modality"], alone_image["modality"]) == ("audio", "image")
    assert broken["error"].startswith("not a WAV file") and "label" not in broken

    code, _, err = vitkit(capsys, monkeypatch, "train", manifest, "--ood", "--out",
                          tmp_path / "other")
    assert code == 2 and "--ood" in err and "does not apply" in err
    assert not (tmp_path / "other").exists()
    code, _, err = vitkit(capsys, monkeypatch, "eval", bundle, manifest, "--modality", "smell")
    assert code == 2 and "'smell' is not one of both, image, audio" in err
    code, _, err = vitkit(capsys, monkeypatch, "eval", bundle, manifest, "--tta", "flip")
    assert code == 2 and "--tta does not apply" in err
