"""Detection data: COCO, YOLO and MVTec-derived boxes; what is dropped or skipped and why;
boxes that move with the image through the joint transforms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from vitkit.data.boxes import (
    DetectionDataset,
    DetectionSample,
    assign_sample_splits,
    boxes_from_mask,
    check_box,
    check_detection_usable,
    collate_detection,
    detection_transform,
    find_detection_layout,
    parse_yolo_line,
    scan_detection,
    validate_detection,
    write_dropped_csv,
)
from vitkit.data.images import reason_kind
from vitkit.data.joint import JointAugmentation
from vitkit.errors import DataError

DEEPPCB = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "deeppcb"


def box_image(path: Path, size: tuple[int, int] = (100, 50),
              boxes: tuple[tuple[int, int, int, int], ...] = ((40, 15, 60, 35),)) -> Path:
    """Black RGB image with white rectangles (XYXY, x2/y2 exclusive)."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    for x1, y1, x2, y2 in boxes:
        pixels[y1:y2, x1:x2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def yolo_folder(root: Path, labels: dict[str, str], names: str = "names: [cat, dog]\n",
                split: str = "") -> Path:
    """``root/images[/split]/<name>.png`` (100x50, white box at 40,15..60,35) with
    ``root/labels[/split]/<name>.txt`` holding ``labels[name]``."""
    (root / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(names)
    for name, text in labels.items():
        box_image(root / "images" / split / f"{name}.png")
        label = root / "labels" / split / f"{name}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(text)
    return root


def kinds(dropped) -> list[tuple[str, str, str]]:
    return [(d.path.name, d.where, reason_kind(d.reason)) for d in dropped]


# --- YOLO -----------------------------------------------------------------------------------

def test_yolo_boxes_in_pixels(tmp_path):
    # 100x50 image: cx 0.5 w 0.2 -> x 40..60; cy 0.5 h 0.4 -> y 15..35.
    yolo_folder(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n0 0.1 0.2 0.2 0.4\n"})
    data = scan_detection(tmp_path)
    assert (data.layout, data.classes) == ("yolo", ["cat", "dog"])
    report = validate_detection(data, progress=False)
    [sample] = report.usable
    assert sample.size == (100, 50)
    assert sample.labels == (1, 0)
    assert np.array(sample.boxes) == pytest.approx(np.array([(40, 15, 60, 35), (0, 0, 20, 20)]))
    assert report.dropped == [] and report.clipped == 0


def test_yolo_names_as_dict_and_classes_txt(tmp_path):
    yolo_folder(tmp_path / "a", {"x": "0 0.5 0.5 0.2 0.2\n"}, names="names: {0: bolt, 1: nut}\n")
    assert scan_detection(tmp_path / "a").classes == ["bolt", "nut"]
    root = yolo_folder(tmp_path / "b", {"x": "0 0.5 0.5 0.2 0.2\n"})
    (root / "data.yaml").unlink()
    (root / "classes.txt").write_text("bolt\nnut\n")
    assert scan_detection(root).classes == ["bolt", "nut"]
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"no data.yaml or classes.txt.*names: \["):
        scan_detection(root)


def test_yolo_split_folders_both_styles(tmp_path):
    ultralytics = tmp_path / "u"
    yolo_folder(ultralytics, {"a": "0 0.5 0.5 0.2 0.2\n"}, split="train")
    yolo_folder(ultralytics, {"b": "1 0.5 0.5 0.2 0.2\n"}, split="val")
    data = scan_detection(ultralytics)
    assert [(i.image.name, i.split, i.source.name if i.source else None) for i in data.items] == [
        ("a.png", "train", "a.txt"), ("b.png", "val", "b.txt")]
    roboflow = tmp_path / "r"
    (roboflow / "data.yaml").parent.mkdir()
    (roboflow / "data.yaml").write_text("names: [cat, dog]\n")
    yolo_folder(roboflow / "train", {"a": "0 0.5 0.5 0.2 0.2\n"})
    yolo_folder(roboflow / "valid", {"b": "1 0.5 0.5 0.2 0.2\n"})
    data = scan_detection(roboflow)
    assert [(i.image.name, i.split) for i in data.items] == [("a.png", "train"), ("b.png", "val")]


def test_yolo_bad_boxes_are_dropped_and_reported_per_file(tmp_path):
    yolo_folder(tmp_path, {"a": (
        "0 0.5 0.5 0.2 0.4\n"      # line 1: good, 40..60 x 15..35
        "0 0.95 0.5 0.2 0.4\n"     # line 2: x2 = 105 on a 100 px image: 5 px out
        "0 0.9 0.5 0.21 0.4\n"     # line 3: x2 = 100.5: clipped to 100
        "0 0.5 0.5 0 0.4\n"        # line 4: zero width
        "7 0.5 0.5 0.2 0.4\n"      # line 5: class 7 of 2
        "0 0.5 0.5\n"              # line 6: 3 values
        "cat 0.5 0.5 0.2 0.4\n"    # line 7: not a number
        "\n"                       # line 8: blank, ignored
    ), "b": "1 0.5 0.5 0.2 0.4\n0 0.5 0.5 0.2 -0.1\n"})
    report = validate_detection(scan_detection(tmp_path), progress=False)
    assert [len(s.boxes) for s in report.usable] == [2, 1]
    assert report.usable[0].boxes[1] == pytest.approx((79.5, 15, 100, 35))
    assert report.clipped == 1
    assert kinds(report.dropped) == [
        ("a.txt", "line 6", "bad line"),
        ("a.txt", "line 7", "bad line"),
        ("a.txt", "line 2", "outside the image"),
        ("a.txt", "line 4", "no area"),
        ("a.txt", "line 5", "unknown class"),
        ("b.txt", "line 2", "no area"),
    ]
    assert all(d.image and d.image.suffix == ".png" for d in report.dropped)
    outside = report.dropped[2].reason
    assert "by 5.0 px" in outside and "100x50 px image" in outside
    assert "7; the 2 classes are 0..1: cat, dog" in report.dropped[4].reason
    lines = report.dropped_per_file()
    assert len(lines) == 2
    assert lines[0].startswith(f"{tmp_path / 'labels' / 'a.txt'}: 5 boxes dropped (line 6: ")
    assert lines[1].startswith(f"{tmp_path / 'labels' / 'b.txt'}: 1 box dropped (line 2: no area")
    summary = report.summary()
    assert summary.startswith("2 usable images with 3 boxes (0 without any), 0 skipped; "
                              "6 boxes dropped in 2 files (2 bad line, 2 no area, ")
    assert summary.endswith("1 box clipped by at most 1 px")
    write_dropped_csv(report.dropped, tmp_path / "dropped.csv")
    rows = (tmp_path / "dropped.csv").read_text().splitlines()
    assert rows[0] == "path,where,reason,image" and len(rows) == 7


def test_yolo_unusable_files_are_skipped(tmp_path, images):
    yolo_folder(tmp_path, {"good": "0 0.5 0.5 0.2 0.2\n", "broken": "0 0.5 0.5 0.2 0.2\n",
                           "latin1": "0 0.5 0.5 0.2 0.2\n"})
    images.truncated_jpeg(tmp_path / "images" / "broken.png")
    (tmp_path / "labels" / "latin1.txt").write_bytes(b"0 0.5 0.5 0.2 0.2 \xff\xfe\n")
    box_image(tmp_path / "images" / "unlabelled.png")  # no label file: an image without objects
    (tmp_path / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "labels" / "classes.txt").write_text("cat\ndog\n")  # labelImg's: not a label
    report = validate_detection(scan_detection(tmp_path), progress=False)
    assert {s.image.name: len(s.boxes) for s in report.usable} == {"good.png": 1,
                                                                   "unlabelled.png": 0}
    skipped = {s.path.relative_to(tmp_path).as_posix(): reason_kind(s.reason)
               for s in report.skipped}
    assert skipped == {"labels/latin1.txt": "unreadable label file",
                       "labels/orphan.txt": "no image",
                       "images/broken.png": "truncated or corrupt"}
    assert "(1 without any)" in report.summary()


def test_parse_yolo_line():
    record = parse_yolo_line("3 0.5 0.25 0.5 0.5", "line 9")
    assert not isinstance(record, str)
    assert (record.label, record.box, record.where) == (3, (0.25, 0.0, 0.75, 0.5), "line 9")
    assert reason_kind(str(parse_yolo_line("1.5 0.5 0.5 0.1 0.1"))) == "unknown class"
    assert reason_kind(str(parse_yolo_line("1 nan 0.5 0.1 0.1"))) == "bad line"


# --- COCO -----------------------------------------------------------------------------------

def coco_file(root: Path, annotations: list[dict], images: list[dict] | None = None,
              categories: list[dict] | None = None) -> Path:
    path = root / "annotations.json"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "images": images if images is not None else
        [{"id": 1, "file_name": "a.png", "width": 100, "height": 50}],
        "annotations": annotations,
        "categories": categories if categories is not None else
        [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }))
    return path


def test_coco_xywh_to_xyxy_and_classes_in_id_order(tmp_path):
    box_image(tmp_path / "a.png")
    box_image(tmp_path / "images" / "b.png")  # found in images/ beside the JSON
    path = coco_file(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [40, 15, 20, 20]},
        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 10.5, 5]},
    ], images=[{"id": 1, "file_name": "a.png", "width": 100, "height": 50},
               {"id": 2, "file_name": "b.png"}])
    assert find_detection_layout(path) == "coco"
    data = scan_detection(path)
    assert data.classes == ["cat", "dog"]  # category ids 3, 7
    report = validate_detection(data, progress=False)
    assert [(s.image.relative_to(tmp_path).as_posix(), s.boxes, s.labels)
            for s in report.usable] == [("a.png", ((40, 15, 60, 35),), (1,)),
                                        ("images/b.png", ((0, 0, 10.5, 5),), (0,))]


def test_coco_bad_annotations_and_images(tmp_path):
    box_image(tmp_path / "a.png")
    box_image(tmp_path / "wrong_size.png", size=(60, 50))
    path = coco_file(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [40, 15, 20, 20]},
        {"id": 2, "image_id": 1, "category_id": 99, "bbox": [40, 15, 20, 20]},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [90, 15, 20, 20]},
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3]},
        {"id": 5, "image_id": 42, "category_id": 3, "bbox": [1, 2, 3, 4]},
        {"id": 6, "image_id": 1, "category_id": 3, "bbox": [0, 0, 50, 50], "iscrowd": 1},
        {"id": 7, "image_id": 1, "category_id": 3, "bbox": [10, 10, 0, 5]},
    ], images=[{"id": 1, "file_name": "a.png", "width": 100, "height": 50},
               {"id": 2, "file_name": "missing.png"},
               {"id": 3, "file_name": "wrong_size.png", "width": 100, "height": 50}])
    report = validate_detection(scan_detection(path), progress=False)
    [sample] = report.usable
    assert sample.boxes == ((40, 15, 60, 35),)
    assert [(d.where.split(" (")[0], reason_kind(d.reason)) for d in report.dropped] == [
        ("annotation 4", "bad annotation"),
        ("annotation 5", "unknown image"),
        ("annotation 2", "unknown class"),
        ("annotation 6", "crowd region"),
        ("annotation 3", "outside the image"),
        ("annotation 7", "no area"),
    ]
    assert all(d.path == path for d in report.dropped)
    assert report.dropped[2].image == tmp_path / "a.png"
    assert "(image 1, a.png)" in report.dropped[2].where
    assert {s.path.name: reason_kind(s.reason) for s in report.skipped} == {
        "missing.png": "file not found", "wrong_size.png": "size differs from the annotation"}
    assert "file 60x50 px, annotation 100x50 px" in report.skipped[1].reason
    assert report.dropped_per_file() == [report.dropped_per_file()[0]]  # one file: the JSON
    assert "6 boxes dropped" in report.dropped_per_file()[0]


@pytest.mark.parametrize("content, problem", [
    ("{not json", "cannot read the COCO file"),
    (json.dumps({"images": [], "annotations": []}), "categories: Field required"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}],
                 "categories": [{"id": 1, "name": "x"}]}), "repeats the image id 1"),
])
def test_malformed_coco_file(tmp_path, content, problem):
    path = tmp_path / "ann.json"
    path.write_text(content)
    with pytest.raises(DataError, match=problem):
        scan_detection(path)


# --- MVTec ----------------------------------------------------------------------------------

def test_boxes_from_mask_connected_components():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:5, 3:8] = 255        # a 5x3 block
    mask[10, 10] = mask[11, 11] = mask[12, 12] = 255  # a diagonal line: one 8-connected region
    mask[15:18, 25:30] = 1      # touches the right edge
    assert boxes_from_mask(mask) == [(3, 2, 8, 5), (10, 10, 13, 13), (25, 15, 30, 18)]
    assert boxes_from_mask(np.zeros((5, 5))) == []


def test_mvtec_boxes(tmp_path):
    box_image(tmp_path / "train" / "good" / "n1.png", boxes=())
    box_image(tmp_path / "test" / "good" / "n2.png", boxes=())
    box_image(tmp_path / "test" / "scratch" / "s1.png")
    mask = np.zeros((50, 100), np.uint8)
    mask[15:35, 40:60] = 255
    mask[0:2, 0:3] = 255
    (tmp_path / "ground_truth" / "scratch").mkdir(parents=True)
    Image.fromarray(mask).save(tmp_path / "ground_truth" / "scratch" / "s1_mask.png")
    box_image(tmp_path / "test" / "dent" / "d1.png")  # no mask: skipped
    box_image(tmp_path / "test" / "dent" / "d2.png")
    (tmp_path / "ground_truth" / "dent").mkdir()
    small = np.full((10, 10), 255, np.uint8)  # not the image's size: skipped
    Image.fromarray(small).save(tmp_path / "ground_truth" / "dent" / "d2_mask.png")
    assert find_detection_layout(tmp_path) == "mvtec"

    data = scan_detection(tmp_path, mvtec_classes="per_defect")
    assert data.classes == ["dent", "scratch"]
    report = validate_detection(data, progress=False)
    boxes = {s.image.name: (s.boxes, s.labels) for s in report.usable}
    assert boxes == {"n1.png": ((), ()), "n2.png": ((), ()),
                     "s1.png": (((0, 0, 3, 2), (40, 15, 60, 35)), (1, 1))}
    assert {s.path.name: reason_kind(s.reason) for s in report.skipped} == {
        "d1.png": "no mask", "d2_mask.png": "mask size differs from the image"}
    assert scan_detection(tmp_path).classes == ["defect"]


@pytest.mark.skipif(not DEEPPCB.is_dir(), reason=f"real data set not here: {DEEPPCB} is absent")
def test_deeppcb_boxes_inside_the_image():
    data = scan_detection(DEEPPCB)
    assert data.layout == "mvtec" and data.classes == ["defect"]
    report = validate_detection(data, progress=False)
    assert report.skipped == [] and report.dropped == [] and report.clipped == 0
    assert report.box_count > 0
    defective = [s for s in report.usable if s.defect != "good"]
    assert len(defective) == 40
    assert all(s.boxes for s in defective)  # every defective image shows a defect
    assert not any(s.boxes for s in report.usable if s.defect == "good")
    for sample in report.usable:
        assert sample.size == (640, 640)
        for x1, y1, x2, y2 in sample.boxes:
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 640


# --- layouts and checks ---------------------------------------------------------------------

def test_no_layout_names_the_expected_ones(tmp_path):
    (tmp_path / "export.json").write_text("{}")
    (tmp_path / "pictures").mkdir()
    with pytest.raises(DataError) as info:
        find_detection_layout(tmp_path)
    message = str(info.value)
    assert "pictures/" in message and "COCO" in message and "YOLO" in message
    assert "MVTec" in message and f"give the .json itself, e.g. {tmp_path / 'export.json'}" in (
        message)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a COCO annotations .json"):
        find_detection_layout(tmp_path / "notes.txt")


def test_yolo_images_without_labels_folder(tmp_path):
    box_image(tmp_path / "images" / "a.png")
    (tmp_path / "data.yaml").write_text("names: [a]\n")
    with pytest.raises(DataError, match=r"no labels folder.*labels/"):
        scan_detection(tmp_path)


def test_check_box():
    classes = ["a", "b"]
    assert check_box((1, 2, 3, 4), 0, classes, 10, 10) == ((1, 2, 3, 4), False)
    assert check_box((-0.5, 2, 10.75, 4), 1, classes, 10, 10) == ((0, 2, 10, 4), True)
    assert reason_kind(str(check_box((-1.5, 2, 3, 4), 0, classes, 10, 10))) == "outside the image"
    assert reason_kind(str(check_box((3, 2, 3, 4), 0, classes, 10, 10))) == "no area"
    assert reason_kind(str(check_box((10.2, 2, 10.9, 4), 0, classes, 10, 10))) == "no area"
    assert reason_kind(str(check_box((1, 2, 3, 4), 2, classes, 10, 10))) == "unknown class"
    assert reason_kind(str(check_box((1, 2, 3, 4), -1, classes, 10, 10))) == "unknown class"


def test_check_detection_usable(tmp_path):
    yolo_folder(tmp_path, {"a": "5 0.5 0.5 0.2 0.2\n"})
    report = validate_detection(scan_detection(tmp_path), progress=False)
    with pytest.raises(DataError, match=r"has a usable box; 1 were dropped: .*a.txt: 1 box"):
        check_detection_usable(report)


def test_assign_sample_splits(tmp_path):
    samples = [DetectionSample(tmp_path / f"{i}.png", (), (), (10, 10), None, "good")
               for i in range(10)]
    split = assign_sample_splits(samples, 0.3, seed=1)
    assert split == assign_sample_splits(samples, 0.3, seed=1)
    assert [s.split for s in split].count("val") == 3


# --- transforms and loading -----------------------------------------------------------------

def white_box(image: torch.Tensor) -> tuple[int, int, int, int]:
    """XYXY (x2/y2 exclusive) around the bright pixels of a (3, H, W) 0..1 image."""
    ys, xs = torch.nonzero(image.mean(0) > 0.5, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_flip_and_resize_move_boxes_with_the_pixels(tmp_path):
    yolo_folder(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n"})
    box_image(tmp_path / "images" / "a.png", boxes=((10, 5, 30, 25),))  # off-centre
    (tmp_path / "labels" / "a.txt").write_text("1 0.2 0.3 0.2 0.4\n")  # 10..30 x 5..25
    report = validate_detection(scan_detection(tmp_path), progress=False)
    flip = JointAugmentation(hflip=1.0, degrees=0, translate=0, scale=(1.0, 1.0), color_jitter=0)
    dataset = DetectionDataset(report.usable, detection_transform((100, 200), True, flip))
    image, target = dataset[0]
    assert image.shape == (3, 100, 200) and image.dtype == torch.float32
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    # Flipped: x 70..90 of 100; doubled: x 140..180, y 10..50.
    assert target["boxes"].tolist() == [[140.0, 10.0, 180.0, 50.0]]
    assert white_box(image) == (140, 10, 180, 50)


def test_random_affine_keeps_boxes_on_the_pixels(tmp_path):
    yolo_folder(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n"})
    report = validate_detection(scan_detection(tmp_path), progress=False)
    dataset = DetectionDataset(report.usable, detection_transform(128, train=True))
    torch.manual_seed(0)
    for _ in range(5):
        image, target = dataset[0]
        [box] = target["boxes"].tolist()
        assert box == pytest.approx(white_box(image), abs=1.5)


def test_sanitize_drops_boxes_pushed_out_with_their_labels(tmp_path):
    sample = DetectionSample(box_image(tmp_path / "a.png"), ((40, 15, 60, 35), (0, 0, 2, 2)),
                             (0, 1), (100, 50))
    shift = JointAugmentation(hflip=0, degrees=0, translate=0.3, scale=(1.0, 1.0),
                              color_jitter=0)
    dataset = DetectionDataset([sample], detection_transform(None, True, shift))
    torch.manual_seed(0)
    kept = [dataset[0][1] for _ in range(20)]
    assert all(len(t["boxes"]) == len(t["labels"]) for t in kept)
    assert any(len(t["labels"]) == 1 for t in kept)  # the corner box was moved out sometimes


def test_loader_with_collate_and_label_offset(tmp_path):
    yolo_folder(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n", "b": ""})
    report = validate_detection(scan_detection(tmp_path), progress=False)
    dataset = DetectionDataset(report.usable, label_offset=1)
    images, targets = next(iter(DataLoader(dataset, batch_size=2, collate_fn=collate_detection)))
    assert [tuple(im.shape) for im in images] == [(3, 50, 100), (3, 50, 100)]
    assert images[0].max() == 1.0  # 0..1, not normalised
    assert targets[0]["labels"].tolist() == [2]
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["labels"].shape == (0,)


def test_file_changed_after_validation_stops_the_run(tmp_path):
    yolo_folder(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n"})
    report = validate_detection(scan_detection(tmp_path), progress=False)
    box_image(tmp_path / "images" / "a.png", size=(60, 50))
    with pytest.raises(DataError, match="changed size during the run"):
        DetectionDataset(report.usable)[0]
