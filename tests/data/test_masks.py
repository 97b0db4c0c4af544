"""Segmentation pairs: layouts, mask encodings, what is skipped and why, joint transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data.images import reason_kind
from vitkit.data.joint import JointAugmentation
from vitkit.data.masks import (
    MaskPair,
    SegmentationDataset,
    assign_pair_splits,
    check_pairs_usable,
    find_segmentation_layout,
    mask_to_classes,
    scan_segmentation,
    segmentation_transform,
    validate_pairs,
)
from vitkit.data.validate import write_skipped_csv
from vitkit.errors import DataError

SQUARE = (8, 4, 20, 14)  # x1, y1, x2, y2 of the white square in a 32x24 image


def square_image(path: Path, size: tuple[int, int] = (32, 24),
                 box: tuple[int, int, int, int] = SQUARE) -> Path:
    """Black RGB image with a white rectangle; x2/y2 exclusive."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    x1, y1, x2, y2 = box
    pixels[y1:y2, x1:x2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def square_mask(path: Path, size: tuple[int, int] = (32, 24),
                box: tuple[int, int, int, int] = SQUARE, value: int = 255,
                mode: str = "L") -> Path:
    values = np.zeros((size[1], size[0]), np.uint8)
    x1, y1, x2, y2 = box
    values[y1:y2, x1:x2] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.fromarray(values, mode="L")
    if mode == "P":
        mask = mask.convert("P")  # the grey levels become palette indices unchanged
        mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (252 * 3))
    mask.save(path)
    return path


def pair(root: Path, name: str, value: int = 255, mode: str = "L") -> None:
    square_image(root / "images" / f"{name}.jpg")
    square_mask(root / "masks" / f"{name}.png", value=value, mode=mode)


def by_path(report, root: Path) -> dict[str, str]:
    return {s.path.relative_to(root).as_posix(): reason_kind(s.reason) for s in report.skipped}


# --- layouts --------------------------------------------------------------------------------

def test_flat_layout_binary_masks_default_classes(tmp_path):
    pair(tmp_path, "a")
    pair(tmp_path, "b", value=1)  # 0/1 masks are binary too
    data = scan_segmentation(tmp_path)
    assert (data.layout, data.classes) == ("masks", ["background", "defect"])
    report = validate_pairs(data, progress=False)
    assert [p.image.name for p in report.usable] == ["a.jpg", "b.jpg"]
    assert report.skipped == []
    assert report.class_images == {"background": 2, "defect": 2}
    image, mask = SegmentationDataset(report.usable, data.classes)[0]
    assert image.shape == (3, 24, 32) and image.dtype == torch.float32
    assert mask.shape == (24, 32) and mask.dtype == torch.int64
    expected = torch.zeros(24, 32, dtype=torch.int64)
    expected[4:14, 8:20] = 1
    assert torch.equal(mask, expected)
    assert type(mask) is torch.Tensor  # a plain tensor, not a tv_tensors.Mask


def test_split_folders(tmp_path):
    pair(tmp_path / "train", "a")
    pair(tmp_path / "train", "b")
    pair(tmp_path / "valid", "c")
    assert find_segmentation_layout(tmp_path) == "masks"
    data = scan_segmentation(tmp_path)
    assert [(p.image.name, p.split) for p in data.pairs] == [
        ("a.jpg", "train"), ("b.jpg", "train"), ("c.jpg", "val")]


def test_split_folder_without_masks_names_the_fix(tmp_path):
    square_image(tmp_path / "train" / "images" / "a.jpg")
    with pytest.raises(DataError, match=r"has no masks folder beside it.*train/masks"):
        scan_segmentation(tmp_path)


def test_palette_masks_with_classes_file(tmp_path):
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    pair(tmp_path, "a", value=2, mode="P")
    data = scan_segmentation(tmp_path)
    assert data.classes == ["background", "cat", "dog"]
    report = validate_pairs(data, progress=False)
    assert report.class_images == {"background": 1, "cat": 0, "dog": 1}
    _, mask = SegmentationDataset(report.usable, data.classes)[0]
    assert set(mask.unique().tolist()) == {0, 2}
    assert (mask[4:14, 8:20] == 2).all()


def test_data_yaml_names_as_dict(tmp_path):
    (tmp_path / "data.yaml").write_text("names: {0: bg, 1: crack, 2: hole}\nnc: 3\n")
    pair(tmp_path, "a", value=1, mode="P")
    assert scan_segmentation(tmp_path).classes == ["bg", "crack", "hole"]


@pytest.mark.parametrize("text, problem", [
    ("names: {0: bg, 2: crack}\n", "keys must be 0..1"),
    ("names: [bg, bg]\n", "repeated class name"),
    ("names: [bg, crack]\nnc: 3\n", "nc is 3"),
    ("nmes: [bg]\n", "names: Field required"),
    ("names: [bg\n", "cannot read"),
])
def test_bad_names_file_says_what_and_where(tmp_path, text, problem):
    (tmp_path / "data.yaml").write_text(text)
    pair(tmp_path, "a")
    with pytest.raises(DataError, match="data.yaml") as info:
        scan_segmentation(tmp_path)
    assert problem in str(info.value)


def test_mvtec_layout(tmp_path):
    square_image(tmp_path / "train" / "good" / "n1.png", box=(0, 0, 0, 0))
    square_image(tmp_path / "test" / "good" / "n2.png", box=(0, 0, 0, 0))
    square_image(tmp_path / "test" / "crack" / "c1.png")
    square_mask(tmp_path / "ground_truth" / "crack" / "c1_mask.png")
    square_image(tmp_path / "test" / "hole" / "h1.png")
    square_mask(tmp_path / "ground_truth" / "hole" / "h1_mask.png")
    square_image(tmp_path / "test" / "hole" / "h2.png")  # its mask is missing
    assert find_segmentation_layout(tmp_path) == "mvtec"

    single = scan_segmentation(tmp_path)
    assert single.classes == ["background", "defect"]
    per_defect = scan_segmentation(tmp_path, mvtec_classes="per_defect")
    assert per_defect.classes == ["background", "crack", "hole"]
    report = validate_pairs(per_defect, progress=False)
    assert by_path(report, tmp_path) == {"test/hole/h2.png": "no mask"}
    assert "ground_truth/hole/h2_mask.png" in report.skipped[0].reason
    assert report.skipped[0].label == "hole"
    masks = {p.image.name: SegmentationDataset([p], per_defect.classes)[0][1]
             for p in report.usable}
    assert masks["n1.png"].sum() == 0 and masks["n2.png"].sum() == 0  # normal: all background
    assert set(masks["c1.png"].unique().tolist()) == {0, 1}
    assert set(masks["h1.png"].unique().tolist()) == {0, 2}


def test_no_layout_names_the_expected_ones(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError) as info:
        find_segmentation_layout(tmp_path)
    message = str(info.value)
    assert "photos/" in message and "notes.txt" in message
    assert "DATA/images/ and DATA/masks/" in message and "MVTec" in message
    with pytest.raises(DataError, match="does not exist"):
        find_segmentation_layout(tmp_path / "missing")
    with pytest.raises(DataError, match="is a file"):
        find_segmentation_layout(tmp_path / "notes.txt")


# --- validation -----------------------------------------------------------------------------

def test_every_bad_pair_is_skipped_with_the_file_and_reason(tmp_path, images):
    pair(tmp_path, "good")
    square_image(tmp_path / "images" / "no_mask.jpg")
    square_mask(tmp_path / "masks" / "no_image.png")
    square_image(tmp_path / "images" / "small_mask.jpg")
    square_mask(tmp_path / "masks" / "small_mask.png", size=(16, 12), box=(1, 1, 4, 4))
    square_image(tmp_path / "images" / "grey_values.jpg")
    square_mask(tmp_path / "masks" / "grey_values.png", value=128)
    square_image(tmp_path / "images" / "colour.jpg")
    Image.new("RGB", (32, 24), (255, 0, 0)).save(tmp_path / "masks" / "colour.png")
    images.text(tmp_path / "images" / "text.jpg")
    square_mask(tmp_path / "masks" / "text.png")
    square_image(tmp_path / "images" / "broken_mask.jpg")
    images.empty(tmp_path / "masks" / "broken_mask.png")
    square_image(tmp_path / "images" / "two_masks.jpg")
    square_mask(tmp_path / "masks" / "two_masks.png")
    square_mask(tmp_path / "masks" / "two_masks.bmp")

    data = scan_segmentation(tmp_path)
    report = validate_pairs(data, progress=False)  # never raises on bad files

    assert [p.image.name for p in report.usable] == ["good.jpg"]
    assert by_path(report, tmp_path) == {
        "images/no_mask.jpg": "no mask",
        "masks/no_image.png": "no image",
        "images/two_masks.jpg": "more than one mask",
        "masks/small_mask.png": "mask size differs from the image",
        "masks/grey_values.png": "mask values are not 0 and 255",
        "masks/colour.png": "unsupported mask mode",
        "images/text.jpg": "not an image",
        "masks/broken_mask.png": "empty file",
    }
    reasons = {s.path.name: s.reason for s in report.skipped}
    assert "mask 16x12 px, image 32x24 px" in reasons["small_mask.png"]
    assert "0, 128" in reasons["grey_values.png"]
    assert "masks/no_mask.png" in reasons["no_mask.jpg"]
    summary = report.summary()
    assert summary.startswith("1 usable pair, 8 skipped (")
    assert "1 mask size differs from the image" in summary

    write_skipped_csv(report.skipped, tmp_path / "skipped.csv")
    rows = (tmp_path / "skipped.csv").read_text().splitlines()
    assert rows[0] == "path,reason" and len(rows) == 9


def test_unknown_class_index(tmp_path):
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    pair(tmp_path, "a", value=5, mode="P")
    report = validate_pairs(scan_segmentation(tmp_path), progress=False)
    assert by_path(report, tmp_path) == {"masks/a.png": "mask holds unknown class indices"}
    assert "(5; the 2 classes are 0..1" in report.skipped[0].reason


@pytest.mark.parametrize("values, mode, n_classes, expected", [
    ([0, 255], "L", 2, [0, 1]),
    ([0, 1], "L", 2, [0, 1]),
    ([0, 2], "L", 3, [0, 2]),  # more than two classes: grey levels are indices
    ([0, 255], "L", 3, [0, 255]),  # ... and 255 is the ignore mark
    ([0, 1], "P", 2, [0, 1]),
])
def test_mask_encodings(values, mode, n_classes, expected):
    mask = Image.fromarray(np.array([values * 4] * 8, np.uint8), mode="L")
    if mode == "P":
        mask = mask.convert("P")
    assert np.unique(mask_to_classes(mask, n_classes)).tolist() == expected


def test_grey_rgb_mask_is_accepted():
    grey = np.zeros((8, 8, 3), np.uint8)
    grey[2:4, 2:4] = 255
    assert mask_to_classes(Image.fromarray(grey), 2).sum() == 4


def test_check_pairs_usable(tmp_path, images):
    square_image(tmp_path / "images" / "a.jpg")
    square_mask(tmp_path / "masks" / "a.png", box=(0, 0, 0, 0))  # background only
    report = validate_pairs(scan_segmentation(tmp_path), progress=False)
    with pytest.raises(DataError, match="nothing to segment"):
        check_pairs_usable(report)
    images.text(tmp_path / "images" / "a.jpg")
    report = validate_pairs(scan_segmentation(tmp_path), progress=False)
    with pytest.raises(DataError, match=r"no usable image/mask pairs.*a\.jpg: not an image"):
        check_pairs_usable(report)


def test_file_changed_after_validation_stops_the_run(tmp_path, images):
    pair(tmp_path, "a")
    data = scan_segmentation(tmp_path)
    report = validate_pairs(data, progress=False)
    square_mask(tmp_path / "masks" / "a.png", size=(10, 10))
    with pytest.raises(DataError, match="became unusable during the run"):
        SegmentationDataset(report.usable, data.classes)[0]


def test_assign_pair_splits_is_seeded_and_keeps_given_splits(tmp_path):
    pairs = [MaskPair(tmp_path / f"{d}{i}.png", None, None, d) for d in ("good", "crack")
             for i in range(10)]
    pairs.append(MaskPair(tmp_path / "fixed.png", None, "test", "crack"))
    first = assign_pair_splits(pairs, 0.2, seed=3)
    assert first == assign_pair_splits(pairs, 0.2, seed=3)
    assert first[-1].split == "test"
    for defect in ("good", "crack"):
        splits = [p.split for p in first[:-1] if p.defect == defect]
        assert splits.count("val") == 2 and splits.count("train") == 8


# --- transforms -----------------------------------------------------------------------------

def test_flip_and_resize_keep_the_mask_on_the_square(tmp_path):
    pair(tmp_path, "a")
    data = scan_segmentation(tmp_path)
    flip_only = JointAugmentation(hflip=1.0, degrees=0, translate=0, scale=(1.0, 1.0),
                                  color_jitter=0)
    transform = segmentation_transform((48, 64), train=True, augment=flip_only,
                                       mean=None, std=None)
    image, mask = SegmentationDataset(data.pairs, data.classes, transform)[0]
    assert image.shape == (3, 48, 64) and mask.shape == (48, 64)
    assert set(mask.unique().tolist()) == {0, 1}  # nearest: no blended class values
    # The square, x 8..20 of 32, flipped is x 12..24, at twice the size x 24..48, y 8..28.
    expected = torch.zeros(48, 64, dtype=torch.int64)
    expected[8:28, 24:48] = 1
    assert torch.equal(mask, expected)
    white = image.mean(0) > 0.5
    assert torch.equal(white, mask.bool())


def test_random_affine_moves_mask_with_image(tmp_path):
    pair(tmp_path, "a")
    data = scan_segmentation(tmp_path)
    strong = JointAugmentation(hflip=0.5, degrees=30, translate=0.2, scale=(0.8, 1.2),
                               color_jitter=0)
    transform = segmentation_transform(96, train=True, augment=strong, mean=None, std=None)
    dataset = SegmentationDataset(data.pairs, data.classes, transform)
    torch.manual_seed(0)
    for _ in range(5):
        image, mask = dataset[0]
        white = image.mean(0) > 0.5
        on = mask.bool()
        assert on.sum() > 100
        # Image edges are interpolated, mask edges nearest: agree on all but a thin border.
        assert (white & on).sum() / on.sum() > 0.85
        assert (white & on).sum() / white.sum() > 0.85


def test_eval_transform_normalises_and_loader_stacks(tmp_path):
    pair(tmp_path, "a")
    pair(tmp_path, "b")
    data = scan_segmentation(tmp_path)
    dataset = SegmentationDataset(data.pairs, data.classes, segmentation_transform(40, False))
    images, masks = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert images.shape == (2, 3, 40, 40) and masks.shape == (2, 40, 40)
    assert images.min() < -1.5 and images.max() > 2.0  # ImageNet normalisation of 0 and 1
    assert masks.dtype == torch.int64
