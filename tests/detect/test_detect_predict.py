"""A loaded detection bundle: boxes come back in each image's own pixels, the threshold and
order hold, overlays are drawn, and the served answer has the task's shape."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from vitkit.bundle import Bundle, BundleMeta, save_bundle
from vitkit.detect.predict import draw_boxes, load_detector
from vitkit.errors import BundleError
from vitkit.tasks.base import MeasuredTask, ServedTask, get_measured_task, get_task
from vitkit.tasks.detect import answer


def test_boxes_are_mapped_back_to_the_original_size(detect_bundle: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    detector = load_detector(detect_bundle)
    seen: list[tuple[int, ...]] = []

    def fixed(batch: torch.Tensor) -> list[dict[str, torch.Tensor]]:  # at the 64 px input
        seen.append(tuple(batch.shape))
        return [{"boxes": torch.tensor([[8.0, 16.0, 24.0, 32.0], [0.0, 0.0, 64.0, 64.0],
                                        [60.0, 60.0, 70.0, 70.0]]),
                 "scores": torch.tensor([0.5, 0.9, 0.2]), "labels": torch.tensor([1, 0, 0])}
                for _ in range(batch.shape[0])]

    monkeypatch.setattr(detector, "raw", fixed)
    wide = Image.new("RGB", (256, 128))  # width 256, height 128: x * 4, y * 2
    (boxes,) = detector.predict([wide], score_threshold=0.3)
    assert seen == [(1, 3, 64, 64)]
    assert [b.to_dict() for b in boxes] == [
        {"label": "a", "score": 0.9, "box": [0.0, 0.0, 256.0, 128.0]},
        {"label": "b", "score": 0.5, "box": [32.0, 32.0, 96.0, 64.0]}]
    (everything,) = detector.predict([wide], score_threshold=0.0)
    assert everything[-1].box == [240.0, 120.0, 256.0, 128.0]  # clipped to the image


def test_real_detections_lie_inside_each_image(detect_bundle: Path) -> None:
    detector = load_detector(detect_bundle)
    images = [Image.new("RGB", (200, 90), (30, 30, 30)), Image.new("RGB", (50, 120))]
    found = detector.predict(images)
    assert len(found) == 2 and found[0]  # random weights and threshold 0: boxes
    for image, boxes in zip(images, found, strict=True):
        scores = [b.score for b in boxes]
        assert scores == sorted(scores, reverse=True)
        for b in boxes:
            x1, y1, x2, y2 = b.box
            assert 0 <= x1 <= x2 <= image.width and 0 <= y1 <= y2 <= image.height
    drawn = draw_boxes(images[0], found[0][:3], detector.labels)
    assert drawn.size == images[0].size and drawn.getextrema() != images[0].getextrema()


def test_the_served_answer(detect_bundle: Path) -> None:
    served = get_task("detect").serve(Bundle.open(detect_bundle))
    assert (served.kind, served.variant, served.labels) == ("detect", "torch-fp32", ["a", "b"])
    image = Image.new("RGB", (80, 60), (90, 90, 90))
    (reply,) = served.infer([served.prepare(image)])
    assert set(reply) == {"label", "score", "boxes"}
    assert reply["label"] == reply["boxes"][0]["label"]
    assert reply["score"] == reply["boxes"][0]["score"]
    png = served.overlay_png(image, reply)
    assert png is not None and Image.open(io.BytesIO(png)).size == (80, 60)
    assert answer([]) == {"label": "none", "score": 0.0, "boxes": []}


def test_a_bundle_of_another_task_is_refused(tmp_path: Path) -> None:
    meta = BundleMeta(backbone={"name": "x", "source": "timm"}, labels=["a"],
                      preprocessing={})
    other = save_bundle(tmp_path / "classifier", None, meta)
    with pytest.raises(BundleError, match="not a detector"):
        load_detector(other)


def test_bench_measures_the_whole_detection(detect_bundle: Path) -> None:
    task: MeasuredTask = get_measured_task("detect")
    bundle = Bundle.open(detect_bundle)
    assert task.input_size(bundle) == (64, 64) and task.validation_data(bundle) is None
    runtime = task.runtime(bundle)
    rows = runtime(torch.rand(2, 3, 64, 64))  # (N, 7): image, x1, y1, x2, y2, score, label
    assert rows.shape[1] == 7 and set(rows[:, 0].tolist()) == {0.0, 1.0}
    assert runtime.name == "torch-fp32" and len(runtime.outputs(torch.rand(1, 3, 64, 64))) == 15
    served: ServedTask = task.serve(bundle)
    assert served.picture_key == "boxes_png"
