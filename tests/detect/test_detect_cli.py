"""`vitkit detect` end to end on tiny generated data: train (FCOS on efficientnet_lite0 with
its offline ImageNet weights, 1 + 3 epochs), eval, predict with overlays, export to ONNX and
OpenVINO with their parity checked, and the user errors that exit 2; the same train and eval
from a COCO annotations file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from tests.detect.synthetic import make_squares, make_squares_coco, square_image
from tests.e2e.cli import run_cli

from vitkit.bundle import read_meta


def _json(result) -> object:  # noqa: ANN001
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _text(stderr: str) -> str:
    """The message as one line (rich wraps it to the terminal's width)."""
    return " ".join(stderr.split())


def _iou(a: list[float], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


@pytest.mark.slow
def test_train_eval_predict_export(tmp_path: Path) -> None:
    data = make_squares(tmp_path / "squares", n_train=16, n_val=6, size=96)
    run = tmp_path / "run"
    trained = _json(run_cli("detect", "train", data, "--out", run, "--size", 96,
                            "--head-epochs", 1, "--full-epochs", 3, "--batch-size", 4,
                            "--device", "cpu", "--json", "--quiet"))
    assert (trained["train_images"], trained["val_images"], trained["epochs_run"]) == (16, 6, 4)
    assert trained["map_50"] > 0.5, trained
    bundle = Path(trained["bundle"])
    meta = read_meta(bundle)
    assert meta.task == "detect" and meta.labels == ["square"]
    assert (meta.model_extra or {})["detect"]["arch"] == "fcos"
    assert (bundle / "model.safetensors").is_file() and (run / "eval.json").is_file()

    evaluated = _json(run_cli("detect", "eval", bundle, data, "--json", "--quiet"))
    assert evaluated["split"] == "val" and evaluated["n_images"] == 6
    assert evaluated["map_50"] == pytest.approx(trained["map_50"])
    assert set(evaluated["per_class"]["square"]) == {"ap_50", "ap_50_95"}
    assert evaluated["skipped"] == 0 and len(evaluated["pr_curves"]["square"]["recall"]) == 101

    # one val image at twice its width and 1.5 times its height: boxes in its own pixels
    image, boxes = square_image(16, 96)
    image.resize((192, 144)).save(tmp_path / "wide.png")
    out = tmp_path / "predicted"
    predicted = _json(run_cli("detect", "predict", bundle, tmp_path / "wide.png",
                              data / "images" / "val", tmp_path / "missing.png", "--out", out,
                              "--json", "--quiet"))
    failed = [p for p in predicted if "error" in p]
    assert [Path(p["path"]).name for p in failed] == ["missing.png"]
    wide = next(p for p in predicted if p["path"].endswith("wide.png"))
    assert (wide["width"], wide["height"]) == (192, 144)
    expected = tuple(v * s for v, s in zip(boxes[0], (2, 1.5, 2, 1.5), strict=True))
    assert max(_iou(b["box"], expected) for b in wide["boxes"]) > 0.5, wide
    assert (out / "wide_boxes.png").is_file() and (out / "sq_16_boxes.png").is_file()
    assert Image.open(out / "wide_boxes.png").size == (192, 144)
    assert len(json.loads((out / "boxes.json").read_text())) == len(predicted)

    exported = _json(run_cli("detect", "export", bundle, "--json"))
    parity = exported["parity"]
    assert exported["variant"] == "onnx-fp32" and (bundle / exported["file"]).is_file()
    assert parity["max_output_diff"] < 1e-3 and parity["max_box_diff"] < 0.01, parity
    assert parity["same_detections"] == 1.0 and parity["dynamic_size_diff"] < 1e-3, parity
    assert parity["images"].startswith("8 images of")
    assert any(v["name"] == "onnx-fp32" and v["parity"] for v in read_meta(bundle).variants)
    onnx = _json(run_cli("detect", "predict", bundle, tmp_path / "wide.png", "--variant",
                         "onnx-fp32", "--json", "--quiet"))
    assert [b["label"] for b in onnx[0]["boxes"]] == [b["label"] for b in wide["boxes"]]
    for a, b in zip(onnx[0]["boxes"], wide["boxes"], strict=True):
        assert max(abs(x - y) for x, y in zip(a["box"], b["box"], strict=True)) < 0.05

    openvino = _json(run_cli("detect", "export", bundle, "--variant", "openvino-fp32",
                             "--json"))
    parity = openvino["parity"]
    assert openvino["runtime"] == "openvino" and (bundle / openvino["file"]).is_file()
    assert openvino["options"]["frontend"] == "onnx"
    assert parity["max_output_diff"] < 1e-3 and parity["max_box_diff"] < 0.05, parity
    assert parity["same_detections"] == 1.0 and parity["dynamic_size_diff"] < 1e-3, parity
    ov = _json(run_cli("detect", "predict", bundle, tmp_path / "wide.png", "--variant",
                       "openvino-fp32", "--json", "--quiet"))
    assert [b["label"] for b in ov[0]["boxes"]] == [b["label"] for b in wide["boxes"]]
    for a, b in zip(ov[0]["boxes"], wide["boxes"], strict=True):
        assert max(abs(x - y) for x, y in zip(a["box"], b["box"], strict=True)) < 0.05

    # user errors: exit 2, a message, no traceback
    again = run_cli("detect", "train", data, "--out", run, "--size", 96)
    assert again.returncode == 2 and "already holds a finished" in _text(again.stderr)
    odd = run_cli("detect", "train", data, "--out", tmp_path / "r2", "--size", 100)
    assert odd.returncode == 2 and "multiple of 32" in _text(odd.stderr)
    assert "Traceback" not in again.stderr + odd.stderr


@pytest.mark.slow
def test_coco_file_trains_and_evaluates(tmp_path: Path) -> None:
    """DATA is the annotations file itself; the box outside its image and the image missing
    from disk are skipped and reported, not fatal; eval on the same file scores the split the
    training held out."""
    annotations = make_squares_coco(tmp_path / "coco", n_images=22, size=96)
    run = tmp_path / "run"
    trained = _json(run_cli("detect", "train", annotations, "--out", run, "--size", 96,
                            "--head-epochs", 1, "--full-epochs", 3, "--batch-size", 4,
                            "--device", "cpu", "--json", "--quiet"))
    assert trained["train_images"] + trained["val_images"] == 22
    assert trained["val_images"] >= 4 and trained["map_50"] > 0.5, trained
    assert (trained["skipped"], trained["dropped_boxes"]) == (1, 1), trained
    meta = read_meta(trained["bundle"])
    assert meta.task == "detect" and meta.labels == ["square"]
    dropped = (run / "dropped_boxes.csv").read_text()
    assert "annotation" in dropped and "sq_0.png" in dropped

    evaluated = _json(run_cli("detect", "eval", trained["bundle"], annotations, "--json",
                              "--quiet"))
    assert evaluated["split"] == "val" and evaluated["n_images"] == trained["val_images"]
    assert evaluated["map_50"] == pytest.approx(trained["map_50"])
    assert set(evaluated["per_class"]) == {"square"}
