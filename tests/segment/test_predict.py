"""Masks for images at their own size, palette PNGs that read back, overlays, and the served
answer."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.segment.conftest import LABELS
from tests.segment.squares import square_pair

from vitkit.data.masks import mask_to_classes
from vitkit.errors import BundleError
from vitkit.segment.predict import (
    SegmentPredictor,
    class_colours,
    class_shares,
    dominant_label,
    mask_image,
    mask_png,
    overlay,
)
from vitkit.tasks.base import get_task


def test_a_mask_png_round_trips_as_class_indices() -> None:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, (17, 23)).astype(np.uint8)
    mask[0, 0] = 255
    png = mask_png(mask, 3)
    read = Image.open(io.BytesIO(png))
    assert read.mode == "P" and read.size == (23, 17)
    assert np.array_equal(np.asarray(read), mask)
    assert np.array_equal(mask_to_classes(read, 3), mask.astype(np.int64))  # the data layer
    palette = read.getpalette() or []
    assert tuple(palette[3:6]) == class_colours(3)[1] and tuple(palette[:3]) == (0, 0, 0)
    with pytest.raises(ValueError, match="is \\(H, W\\)"):
        mask_image(mask[None], 3)


def test_the_overlay_tints_classes_and_leaves_background_alone() -> None:
    image, _ = square_pair(0, 32)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[4:10, 4:10] = 1
    shown = np.asarray(overlay(image, mask, 2))
    original = np.asarray(image)
    assert np.array_equal(shown[mask == 0], original[mask == 0])
    expected = 0.5 * original[5, 5] + 0.5 * np.array(class_colours(2)[1])
    assert np.abs(shown[5, 5] - expected).max() <= 1


def test_the_label_is_the_largest_foreground_class() -> None:
    assert dominant_label({"background": 0.9, "a": 0.04, "b": 0.06}) == "b"
    assert dominant_label({"background": 1.0, "a": 0.0}) == "background"


def test_masks_come_back_at_each_images_size(random_bundle: Path) -> None:
    predictor = SegmentPredictor.load(random_bundle)
    assert predictor.input_size == (64, 64) and predictor.labels == LABELS
    images = [Image.new("RGB", (50, 70), (90, 20, 200)), square_pair(1, 64)[0]]
    found = predictor.predict(images, ["a.png", "b.png"])
    assert [p.mask.shape for p in found] == [(70, 50), (64, 64)]
    record = found[0].to_dict()
    assert record["size"] == [50, 70] and record["path"] == "a.png"
    assert set(record["classes"]) == set(LABELS)
    assert sum(record["classes"].values()) == pytest.approx(1.0, abs=1e-5)
    assert record["label"] in LABELS
    # torch-bf16 is one of the built-in variants; its masks mostly agree with fp32
    bf16 = SegmentPredictor.load(random_bundle, variant="torch-bf16")
    batch = torch.stack([predictor.transform(i) for i in images])
    agree = (bf16.masks(batch) == predictor.masks(batch)).float().mean()
    assert agree > 0.9
    with pytest.raises(BundleError, match="no variant 'onnx-fp32'"):
        SegmentPredictor.load(random_bundle, variant="onnx-fp32")


def test_the_served_answer(random_bundle: Path) -> None:
    from vitkit.bundle import Bundle

    served = get_task("segment").serve(Bundle.open(random_bundle))
    assert served.kind == "segment" and served.input_size == (64, 64)
    assert served.picture_key == "mask_png" and served.drift_reference() is None
    image = Image.new("RGB", (40, 30), (200, 200, 200))
    (answer,) = served.infer([served.prepare(image)])
    assert answer["label"] in LABELS and set(answer["classes"]) == set(LABELS)
    assert 0.0 < answer["score"] <= 1.0
    json.dumps({k: v for k, v in answer.items() if not k.startswith("_")})
    picture = served.overlay_png(image, answer)
    assert picture is not None
    mask = Image.open(io.BytesIO(picture))
    assert mask.mode == "P" and mask.size == (40, 30)
    shares = class_shares(np.asarray(mask), LABELS)
    assert dominant_label(shares) == answer["label"]
