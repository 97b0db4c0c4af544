"""Detection data: images with labelled boxes.

Three layouts are recognised (:func:`find_detection_layout`):

* ``coco``: DATA is a COCO annotations ``.json`` file. Each image's ``file_name`` is taken
  relative to the JSON's folder, or to an ``images/`` folder beside it. The categories, in id
  order, are the classes (ids need not be contiguous). ``bbox`` is ``[x, y, width, height]``
  in pixels. Crowd regions (``iscrowd: 1``) mark a group, not one object, and are dropped.
* ``yolo`` (Ultralytics): ``DATA/images/`` and ``DATA/labels/``, one ``.txt`` per image at the
  same path below ``labels/``, one line ``class cx cy w h`` per box with the centre and size as
  fractions 0..1 of the image. Splits: ``DATA/images/{train,val,test}/`` with
  ``DATA/labels/{train,val,test}/``, or ``DATA/{train,val}/images/`` with ``labels/`` beside.
  Classes from ``DATA/data.yaml`` (``names:`` as a list or a ``{0: name}`` mapping; its
  ``train``/``val`` paths are not followed, the folders decide) or ``DATA/classes.txt``. An
  image without a label file has no objects (Ultralytics' background image).
* ``mvtec``: one box per connected region (8-connected) of each MVTec defect mask
  (``DATA/ground_truth/<defect>/<name>_mask.png``); the class is ``defect``, or the defect
  folder's name. ``good`` images have no boxes. They come without a split:
  :func:`assign_sample_splits` shares them out per defect type.

Boxes are XYXY in pixels of the image as :func:`~vitkit.data.images.load_rgb` gives it (after
EXIF orientation), ``x2``/``y2`` being the right/bottom edges (a 1-pixel box at (5, 5) is
5, 5, 6, 6). Validation (:func:`validate_detection`) keeps a box that reaches past the image by
at most :data:`CLIP_TOLERANCE` px, clipped, and drops (and reports, per file) one that reaches
further, has no area, or names an unknown class; an image whose file cannot be used is skipped
as in classification (:class:`~vitkit.data.validate.SkippedImage`).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy import ndimage
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from vitkit.atomic import write_csv_atomic
from vitkit.bundle import describe_validation_error
from vitkit.data.annotated import check_all, group_splits, plural, read_class_names, reason_counts
from vitkit.data.files import find_images
from vitkit.data.images import DEFAULT_MAX_PIXELS, ImageProblem, load_rgb
from vitkit.data.joint import JointAugmentation, joint_transform
from vitkit.data.manifest import SPLIT_ALIASES
from vitkit.data.masks import NO_IMAGE, NO_MASK, MaskPair, read_mask
from vitkit.data.mvtec import GOOD, MASK_SUFFIX, mvtec_test_images
from vitkit.data.validate import SkippedImage
from vitkit.errors import DataError

DetectionLayout = Literal["coco", "yolo", "mvtec"]
MvtecClasses = Literal["single", "per_defect"]
Box = tuple[float, float, float, float]
"""XYXY in pixels."""

CLIP_TOLERANCE = 1.0
"""A box may reach this many pixels past the image (rounding in annotation tools) and is
clipped; one reaching further is dropped as a wrong annotation."""

# Reason kinds (the text before any " (detail)").
OUTSIDE = "outside the image"
NO_AREA = "no area"
UNKNOWN_CLASS = "unknown class"
BAD_LINE = "bad line"
BAD_ANNOTATION = "bad annotation"
UNKNOWN_IMAGE = "unknown image"
CROWD = "crowd region"
UNREADABLE_LABELS = "unreadable label file"
SIZE_DIFFERS = "size differs from the annotation"

# Detection boxes rotate into their enclosing box, which grows with every degree: no rotation
# by default (Ultralytics' default too); flips, shifts, zoom and colour only.
DETECTION_AUGMENTATION = JointAugmentation(degrees=0.0, translate=0.05, scale=(0.9, 1.1))

_LAYOUT_HELP = (
    "Expected one of: a COCO annotations .json file (give the file itself; images at each "
    "file_name relative to it); a YOLO folder with DATA/images/ and DATA/labels/ (one "
    "'class cx cy w h' line per box, values 0-1) and DATA/data.yaml naming the classes, "
    "optionally split as images/train/ + labels/train/; or an MVTec folder (DATA/train/good/, "
    "DATA/test/<defect>/, DATA/ground_truth/<defect>/<name>_mask.png)."
)


@dataclass(frozen=True)
class BoxRecord:
    """A box as annotated, before it is checked against its image.

    Attributes:
        label: The class index as written (checked against the classes later).
        box: XYXY, in pixels, or in fractions 0..1 of the image when the item is normalised.
        where: Where it is written, e.g. ``"line 3"`` or ``"annotation 17"``.
    """

    label: int
    box: Box
    where: str


@dataclass(frozen=True)
class DroppedBox:
    """An annotated box left out, and why.

    Attributes:
        path: The file holding it: the YOLO ``.txt``, the COCO ``.json``, the MVTec mask.
        where: Where in that file, e.g. ``"line 3"`` or ``"annotation 17 (image 4)"``.
        reason: Short reason, ``"kind (detail)"``, e.g. ``"outside the image (by 6.0 px …)"``.
        image: The image the box belongs to, when known.
    """

    path: Path
    where: str
    reason: str
    image: Path | None = None


@dataclass(frozen=True)
class DetectionItem:
    """One image and its annotation as scanned, not yet opened.

    Attributes:
        image: The image file.
        source: The file its boxes come from, ``None`` when it has none (no objects).
        boxes: The boxes read from ``source``.
        dropped: Annotations of this image that could not be read at all (bad lines).
        normalized: ``boxes`` are fractions 0..1 of the image (YOLO).
        split: Its split, or ``None``.
        defect: The MVTec folder (``"good"`` for normal images), else ``None``.
        mask_class: For MVTec: boxes come from ``source``'s connected regions, with this class.
        size: The (width, height) the annotation states (COCO), checked against the file.
    """

    image: Path
    source: Path | None
    boxes: tuple[BoxRecord, ...] = ()
    dropped: tuple[DroppedBox, ...] = ()
    normalized: bool = False
    split: str | None = None
    defect: str | None = None
    mask_class: int | None = None
    size: tuple[int, int] | None = None


@dataclass
class DetectionData:
    """What :func:`scan_detection` found.

    Attributes:
        root: The COCO ``.json`` file or the data folder (absolute).
        layout: Which layout was detected.
        items: Every candidate image with its annotation, sorted by split and path.
        classes: Class names; a label ``i`` is ``classes[i]``.
        skipped: Images left out while scanning (no file, no mask, unreadable label file)
            and label files without an image.
        dropped: Annotations that belong to no listed image (COCO).
    """

    root: Path
    layout: DetectionLayout
    items: list[DetectionItem]
    classes: list[str]
    skipped: list[SkippedImage] = field(default_factory=list)
    dropped: list[DroppedBox] = field(default_factory=list)


@dataclass(frozen=True)
class DetectionSample:
    """A checked image and its boxes, ready for :class:`DetectionDataset`.

    Attributes:
        image: The image file.
        boxes: XYXY in pixels, inside the image, each with positive area.
        labels: Class index of each box.
        size: The image's (width, height).
        split: Its split, or ``None``.
        defect: The MVTec folder, else ``None``.
    """

    image: Path
    boxes: tuple[Box, ...]
    labels: tuple[int, ...]
    size: tuple[int, int]
    split: str | None = None
    defect: str | None = None


@dataclass
class DetectionReport:
    """The outcome of :func:`validate_detection`.

    Attributes:
        usable: The images that decoded, with their good boxes, in input order.
        skipped: Images left out (the scan's, then those whose file or mask failed).
        dropped: Boxes left out of usable images, in input order.
        classes: The class names.
        clipped: Boxes kept after clipping at most :data:`CLIP_TOLERANCE` px.
    """

    usable: list[DetectionSample]
    skipped: list[SkippedImage]
    dropped: list[DroppedBox]
    classes: list[str]
    clipped: int = 0

    @property
    def box_count(self) -> int:
        return sum(len(s.boxes) for s in self.usable)

    def summary(self) -> str:
        """One line, e.g. ``"38 usable images with 95 boxes (12 without any), 1 skipped (1 not
        an image); 3 boxes dropped in 2 files (2 outside the image, 1 unknown class)"``."""
        empty = sum(1 for s in self.usable if not s.boxes)
        line = (f"{plural(len(self.usable), 'usable image')} with "
                f"{_boxes(self.box_count)} ({empty} without any), "
                f"{len(self.skipped)} skipped")
        if self.skipped:
            line += f" ({reason_counts(s.reason for s in self.skipped)})"
        if self.dropped:
            files = len({d.path for d in self.dropped})
            line += (f"; {_boxes(len(self.dropped))} dropped in {plural(files, 'file')} "
                     f"({reason_counts(d.reason for d in self.dropped)})")
        if self.clipped:
            line += f"; {_boxes(self.clipped)} clipped by at most {CLIP_TOLERANCE:g} px"
        return line

    def dropped_per_file(self) -> list[str]:
        """One line per file, e.g. ``"labels/a.txt: 2 boxes dropped (line 3: outside the image
        (by 6.0 px …); line 5: unknown class (7 …))"``."""
        by_file: dict[Path, list[DroppedBox]] = defaultdict(list)
        for box in self.dropped:
            by_file[box.path].append(box)
        return [f"{path}: {_boxes(len(boxes))} dropped ("
                + "; ".join(f"{b.where}: {b.reason}" for b in boxes) + ")"
                for path, boxes in by_file.items()]


def _boxes(n: int) -> str:
    return f"{n} box{'' if n == 1 else 'es'}"


def find_detection_layout(path: str | Path) -> DetectionLayout:
    """Which detection layout ``path`` holds.

    Raises:
        DataError: It does not exist, or matches no layout; the message lists what it holds
            and the layouts expected (and names the ``.json`` to give for a COCO folder).
    """
    root = Path(path)
    if root.is_file():
        if root.suffix.lower() == ".json":
            return "coco"
        raise DataError(f"{root} is a file but not a COCO annotations .json. {_LAYOUT_HELP}")
    if not root.is_dir():
        raise DataError(f"detection data {root} does not exist. {_LAYOUT_HELP}")
    if _yolo_folders(root):
        return "yolo"
    if (root / "test").is_dir() and ((root / "ground_truth").is_dir()
                                     or (root / "train" / GOOD).is_dir()):
        return "mvtec"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir()
                     if not p.name.startswith("."))
    shown = ", ".join(entries[:12]) + (f", and {len(entries) - 12} more" if len(entries) > 12
                                       else "")
    jsons = [e for e in entries if e.lower().endswith(".json")]
    hint = f" For COCO, give the .json itself, e.g. {root / jsons[0]}." if jsons else ""
    raise DataError(f"{root} is not a detection data folder (it holds: {shown or 'nothing'}). "
                    f"{_LAYOUT_HELP}{hint}")


def _yolo_folders(root: Path) -> list[tuple[str | None, Path, Path]]:
    """``(split, images folder, labels folder)`` of a YOLO layout, or ``[]``."""
    images, labels = root / "images", root / "labels"
    if images.is_dir():
        splits = _split_subfolders(images)
        if splits:
            return [(split, images / name, labels / name) for split, name in splits]
        return [(None, images, labels)]
    return [(split, root / name / "images", root / name / "labels")
            for split, name in _split_subfolders(root) if (root / name / "images").is_dir()]


def _split_subfolders(folder: Path) -> list[tuple[str, str]]:
    found: dict[str, str] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        split = SPLIT_ALIASES.get(sub.name.lower())
        if split is None:
            continue
        if split in found:
            raise DataError(f"{folder} has both {found[split]}/ and {sub.name}/ as the {split} "
                            "split. Keep one of them.")
        found[split] = sub.name
    return sorted(found.items(), key=lambda item: ("train", "val", "test").index(item[0]))


def scan_detection(path: str | Path,
                   mvtec_classes: MvtecClasses = "single") -> DetectionData:
    """Finds the images and reads their annotations, without opening the images.

    Args:
        path: A COCO ``.json``, or a YOLO or MVTec folder (module docstring).
        mvtec_classes: For MVTec: ``"single"`` gives one class ``defect``, ``"per_defect"``
            one class per defect folder.

    Raises:
        DataError: No layout matches, the JSON or the class names are malformed, or there
            are no images.
    """
    root = Path(os.path.abspath(Path(path).expanduser()))
    layout = find_detection_layout(root)
    if layout == "coco":
        data = _scan_coco(root)
    elif layout == "yolo":
        data = _scan_yolo(root)
    else:
        data = _scan_mvtec(root, mvtec_classes)
    if not data.items:
        found = "; ".join(f"{s.path}: {s.reason}" for s in data.skipped[:3])
        raise DataError(f"no usable images in {root}" + (f" ({found})" if found else "")
                        + f". {_LAYOUT_HELP}")
    return data


# --- YOLO -----------------------------------------------------------------------------------

def _scan_yolo(root: Path) -> DetectionData:
    named = read_class_names(root)
    if named is None:
        raise DataError(f"{root} has no data.yaml or classes.txt naming the classes. Add "
                        f"{root / 'data.yaml'} with e.g. names: [scratch, dent] (class 0 is "
                        "scratch, class 1 dent).")
    items: list[DetectionItem] = []
    skipped: list[SkippedImage] = []
    for split, images, labels in _yolo_folders(root):
        if not labels.is_dir():
            raise DataError(f"{images} has no labels folder to match: put one "
                            f"'class cx cy w h' .txt file per image in {labels}/.")
        image_files = find_images([str(images)])[0]
        wanted = {labels / image.relative_to(images).with_suffix(".txt") for image in image_files}
        for image in image_files:
            label = labels / image.relative_to(images).with_suffix(".txt")
            if not label.is_file():
                items.append(DetectionItem(image, None, split=split))
                continue
            try:
                text = label.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as exc:
                skipped.append(SkippedImage(label, f"{UNREADABLE_LABELS} ({exc})", split=split))
                continue
            boxes, dropped = _parse_yolo(text, label, image)
            items.append(DetectionItem(image, label, boxes, dropped, True, split))
        for label in sorted(labels.rglob("*.txt")):
            if label not in wanted and label.name != "classes.txt":
                skipped.append(SkippedImage(label, f"{NO_IMAGE} (no image named "
                                                   f"{label.stem}.* in {images})", split=split))
    return DetectionData(root, "yolo", items, named[0], skipped)


def _parse_yolo(text: str, label: Path,
                image: Path) -> tuple[tuple[BoxRecord, ...], tuple[DroppedBox, ...]]:
    boxes: list[BoxRecord] = []
    dropped: list[DroppedBox] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        parsed = parse_yolo_line(line, where)
        if isinstance(parsed, str):
            dropped.append(DroppedBox(label, where, parsed, image))
        else:
            boxes.append(parsed)
    return tuple(boxes), tuple(dropped)


def parse_yolo_line(line: str, where: str = "") -> BoxRecord | str:
    """``"class cx cy w h"`` (fractions of the image) as a normalised XYXY :class:`BoxRecord`,
    or the reason it cannot be read."""
    parts = line.split()
    if len(parts) != 5:
        return f"{BAD_LINE} (expected 'class cx cy w h', got {len(parts)} values: {line[:60]!r})"
    try:
        label, cx, cy, w, h = (float(part) for part in parts)
    except ValueError:
        return f"{BAD_LINE} (not numbers: {line[:60]!r})"
    if not all(math.isfinite(v) for v in (label, cx, cy, w, h)):
        return f"{BAD_LINE} (not a finite number: {line[:60]!r})"
    if not label.is_integer():
        return f"{UNKNOWN_CLASS} ({parts[0]} is not a whole number)"
    return BoxRecord(int(label), (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), where)


# --- COCO -----------------------------------------------------------------------------------

class _CocoImage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: int
    file_name: str = Field(min_length=1)
    width: int | None = Field(None, gt=0)
    height: int | None = Field(None, gt=0)


class _CocoCategory(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: int
    name: str = Field(min_length=1)


class _CocoFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    images: list[_CocoImage]
    annotations: list[Any] = []  # each checked alone: one bad annotation drops one box
    categories: list[_CocoCategory] = Field(min_length=1)


class _CocoAnnotation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    iscrowd: int = 0


def _scan_coco(path: Path) -> DetectionData:
    example = ('{"images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480}], '
               '"annotations": [{"id": 1, "image_id": 1, "category_id": 1, '
               '"bbox": [x, y, width, height]}], "categories": [{"id": 1, "name": "scratch"}]}')
    try:
        content = json.loads(path.read_text(encoding="utf-8-sig"))
        coco = _CocoFile.model_validate(content)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the COCO file {path}: {exc}. Give a UTF-8 JSON file "
                        f"like {example}.") from exc
    except ValidationError as exc:
        raise DataError(f"{path} is not a COCO detection file: {describe_validation_error(exc)}. "
                        f"Expected {example}.") from exc
    _require_unique(path, "image id", [im.id for im in coco.images])
    _require_unique(path, "category id", [c.id for c in coco.categories])
    categories = sorted(coco.categories, key=lambda c: c.id)
    _require_unique(path, "category name", [c.name for c in categories])
    label_of = {c.id: i for i, c in enumerate(categories)}
    images = {im.id: im for im in coco.images}
    boxes: dict[int, list[BoxRecord]] = defaultdict(list)
    dropped: dict[int, list[DroppedBox]] = defaultdict(list)
    orphans: list[DroppedBox] = []  # annotations of no listed image
    for index, raw in enumerate(coco.annotations):
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        where = f"annotation {raw_id}" if isinstance(raw_id, int) else f"annotations[{index}]"
        try:
            ann = _CocoAnnotation.model_validate(raw)
        except ValidationError as exc:
            reason = f"{BAD_ANNOTATION} ({describe_validation_error(exc)})"
            orphans.append(DroppedBox(path, where, reason))
            continue
        image = images.get(ann.image_id)
        if image is None:
            reason = f"{UNKNOWN_IMAGE} (image_id {ann.image_id} is not in images)"
            orphans.append(DroppedBox(path, where, reason))
            continue
        where = f"{where} (image {ann.image_id}, {image.file_name})"
        if ann.iscrowd:
            reason = f"{CROWD} (iscrowd {ann.iscrowd}: a group, not one object)"
        elif ann.category_id not in label_of:
            reason = f"{UNKNOWN_CLASS} (category_id {ann.category_id} is not in categories)"
        else:
            x, y, w, h = ann.bbox
            boxes[ann.image_id].append(BoxRecord(label_of[ann.category_id],
                                                 (x, y, x + w, y + h), where))
            continue
        dropped[ann.image_id].append(DroppedBox(path, where, reason,
                                                _coco_path(path, image.file_name)))
    items: list[DetectionItem] = []
    skipped: list[SkippedImage] = []
    for im in coco.images:
        image_path = _coco_path(path, im.file_name)
        if not image_path.exists():
            beside = path.parent / "images" / im.file_name
            skipped.append(SkippedImage(image_path, f"file not found (image {im.id}; also looked "
                                                    f"for {beside})"))
            continue
        size = (im.width, im.height) if im.width and im.height else None
        items.append(DetectionItem(image_path, path, tuple(boxes[im.id]), tuple(dropped[im.id]),
                                   size=size))
    return DetectionData(path, "coco", items, [c.name for c in categories], skipped, orphans)


def _coco_path(json_path: Path, file_name: str) -> Path:
    direct = json_path.parent / file_name
    beside = json_path.parent / "images" / file_name
    return beside if not direct.exists() and beside.exists() else direct


def _require_unique(path: Path, what: str, values: Sequence[object]) -> None:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise DataError(f"{path} repeats the {what} {', '.join(repeated[:5])}. Each {what} must "
                        "be unique; fix the file.")


# --- MVTec ----------------------------------------------------------------------------------

def _scan_mvtec(root: Path, mvtec_classes: MvtecClasses) -> DetectionData:
    tests = mvtec_test_images(root)
    defects = sorted({t.defect for t in tests} - {GOOD})
    classes = ["defect"] if mvtec_classes == "single" else defects
    good = root / "train" / GOOD
    items = [DetectionItem(p, None, defect=GOOD)
             for p in (find_images([str(good)])[0] if good.is_dir() else [])]
    skipped: list[SkippedImage] = []
    for test in tests:
        if test.defect == GOOD:
            items.append(DetectionItem(test.path, None, defect=GOOD))
        elif test.mask is None:
            where = root / "ground_truth" / test.defect / f"{test.path.stem}{MASK_SUFFIX}.png"
            skipped.append(SkippedImage(test.path, f"{NO_MASK} (looked for {where})", test.defect))
        else:
            label = 0 if mvtec_classes == "single" else classes.index(test.defect)
            items.append(DetectionItem(test.path, test.mask, defect=test.defect, mask_class=label))
    return DetectionData(root, "mvtec", items, classes, skipped)


def boxes_from_mask(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """XYXY pixel boxes of the 8-connected regions of a mask's non-zero pixels, in
    :func:`scipy.ndimage.label`'s order (top to bottom by first pixel). 8-connected, so that a
    diagonal scratch is one defect rather than a box per pixel."""
    regions, _ = ndimage.label(mask > 0, structure=np.ones((3, 3), dtype=bool))
    return [(int(xs.start), int(ys.start), int(xs.stop), int(ys.stop))
            for ys, xs in (s for s in ndimage.find_objects(regions) if s is not None)]


# --- validation -----------------------------------------------------------------------------

def check_box(box: Box, label: int, classes: Sequence[str], width: int, height: int,
              tolerance: float = CLIP_TOLERANCE) -> tuple[Box, bool] | str:
    """A pixel XYXY box checked against its image: the box (clipped to the image when it
    reached past by at most ``tolerance`` px) and whether it was clipped, or why it is dropped.
    """
    if not 0 <= label < len(classes):
        return (f"{UNKNOWN_CLASS} ({label}; the {len(classes)} classes are 0..{len(classes) - 1}: "
                f"{', '.join(classes[:6])}{' …' if len(classes) > 6 else ''})")
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        return f"{BAD_ANNOTATION} (not a finite number: {box})"
    if x2 <= x1 or y2 <= y1:
        return f"{NO_AREA} ({x2 - x1:g} x {y2 - y1:g} px)"
    over = max(-x1, -y1, x2 - width, y2 - height)
    if over > tolerance:
        return (f"{OUTSIDE} (by {over:.1f} px; box {x1:g},{y1:g},{x2:g},{y2:g} in a "
                f"{width}x{height} px image)")
    if over <= 0:
        return box, False
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return f"{NO_AREA} (nothing left inside the {width}x{height} px image)"
    return clipped, True


_Checked = tuple[DetectionSample, list[DroppedBox], int]


def validate_detection(data: DetectionData, max_pixels: int = DEFAULT_MAX_PIXELS,
                       progress: bool = True, workers: int = 2) -> DetectionReport:
    """Decodes every image (and MVTec mask) once and checks every box against its image.

    Args:
        data: What :func:`scan_detection` returned.
        max_pixels: Largest accepted width * height.
        progress: Show a progress bar on stderr.
        workers: Number of threads decoding.
    """

    def check(item: DetectionItem) -> SkippedImage | _Checked:
        try:
            image, _ = load_rgb(item.image, max_pixels)
        except ImageProblem as problem:
            return SkippedImage(item.image, problem.reason, item.defect, item.split)
        width, height = image.size
        if item.size is not None and item.size != image.size:
            return SkippedImage(item.image, f"{SIZE_DIFFERS} (file {width}x{height} px, "
                                            f"annotation {item.size[0]}x{item.size[1]} px)",
                                item.defect, item.split)
        records = item.boxes
        if item.mask_class is not None and item.source is not None:
            try:
                mask = read_mask(MaskPair(item.image, item.source, foreground=1), 2, image.size,
                                 max_pixels)
            except ImageProblem as problem:
                return SkippedImage(item.source, problem.reason, item.defect, item.split)
            records = tuple(BoxRecord(item.mask_class, box, f"region {k}")
                            for k, box in enumerate(boxes_from_mask(mask), start=1))
        scale = (width, height, width, height) if item.normalized else (1, 1, 1, 1)
        kept: list[Box] = []
        labels: list[int] = []
        dropped = list(item.dropped)
        clipped = 0
        for record in records:
            box = (record.box[0] * scale[0], record.box[1] * scale[1],
                   record.box[2] * scale[2], record.box[3] * scale[3])
            outcome = check_box(box, record.label, data.classes, width, height)
            if isinstance(outcome, str):
                dropped.append(DroppedBox(item.source or item.image, record.where, outcome,
                                          item.image))
                continue
            kept.append(outcome[0])
            labels.append(record.label)
            clipped += outcome[1]
        sample = DetectionSample(item.image, tuple(kept), tuple(labels), (width, height),
                                 item.split, item.defect)
        return sample, dropped, clipped

    outcomes = check_all(data.items, check, workers, progress, "Checking images and boxes")
    report = DetectionReport([], list(data.skipped), list(data.dropped), list(data.classes))
    for outcome in outcomes:
        if isinstance(outcome, SkippedImage):
            report.skipped.append(outcome)
            continue
        sample, dropped, clipped = outcome
        report.usable.append(sample)
        report.dropped += dropped
        report.clipped += clipped
    return report


def check_detection_usable(report: DetectionReport) -> None:
    """Raises unless the usable images can train a detector: some images and some boxes.

    Raises:
        DataError: No usable image (with the first reasons), or not a single usable box.
    """
    if not report.usable:
        examples = "; ".join(f"{s.path}: {s.reason}" for s in report.skipped[:3])
        raise DataError(f"no usable images: all {len(report.skipped)} were skipped "
                        f"({reason_counts(s.reason for s in report.skipped)}), e.g. {examples}. "
                        "Fix or replace those files.")
    if not report.box_count:
        lines = report.dropped_per_file()[:3]
        detail = (f"; {len(report.dropped)} were dropped: {'; '.join(lines)}"
                  if report.dropped else "")
        raise DataError(f"none of the {len(report.usable)} usable images has a usable box"
                        f"{detail}. Check that the annotations belong to these images.")


def write_dropped_csv(dropped: Sequence[DroppedBox], path: Path) -> None:
    """Writes ``path,where,reason,image`` rows, atomically (as ``skipped.csv`` is written)."""
    write_csv_atomic(path, ["path", "where", "reason", "image"],
                     ([str(d.path), d.where, d.reason, str(d.image or "")] for d in dropped))


def assign_sample_splits(samples: Sequence[DetectionSample], val_fraction: float = 0.2,
                         seed: int = 0, test_fraction: float = 0.0) -> list[DetectionSample]:
    """Gives a split to every sample without one: seeded, stratified per MVTec defect type
    (all together otherwise); samples with a split keep it.

    Raises:
        ConfigError: The fractions are negative or add up to 1 or more.
    """
    keys = [(s.image, s.defect or "all", s.split) for s in samples]
    splits = group_splits(keys, val_fraction, test_fraction, seed)
    return [s if s.split == split else replace(s, split=split)
            for s, split in zip(samples, splits, strict=True)]


# --- torch ----------------------------------------------------------------------------------

def detection_transform(size: int | tuple[int, int] | None, train: bool,
                        augment: JointAugmentation | None = None,
                        mean: Sequence[float] | None = None,
                        std: Sequence[float] | None = None) -> v2.Compose:
    """The joint image+boxes transform: for training :data:`DETECTION_AUGMENTATION` (flips,
    shift, zoom, colour; no rotation) unless ``augment`` is given; resize to ``size``; boxes
    clamped and those under 1 px dropped with their labels; float 0..1 (no normalisation by
    default: torchvision's detection models normalise inside)."""
    return joint_transform(size, train, augment or DETECTION_AUGMENTATION, mean, std, boxes=True)


Target = dict[str, torch.Tensor]


class DetectionDataset(Dataset[tuple[torch.Tensor, Target]]):
    """Images and their boxes: ``(image float (3, H, W), {"boxes": BoundingBoxes XYXY (N, 4)
    float32, "labels": int64 (N,)})``, the target torchvision's detection models take.

    Args:
        samples: The usable samples from :func:`validate_detection`.
        transform: A joint transform, e.g. :func:`detection_transform`; ``None`` only scales
            the image to 0..1.
        max_pixels: Largest accepted width * height.
        label_offset: Added to every label: 1 for models whose class 0 is the background
            (torchvision's Faster R-CNN), 0 for those without one.
    """

    def __init__(self, samples: Sequence[DetectionSample], transform: v2.Transform | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, label_offset: int = 0) -> None:
        self.samples = list(samples)
        self.transform = transform or joint_transform(None, False, mean=None, std=None,
                                                      boxes=True)
        self.max_pixels = max_pixels
        self.label_offset = label_offset

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        sample = self.samples[i]
        try:
            image, _ = load_rgb(sample.image, self.max_pixels)
        except ImageProblem as problem:
            raise DataError(f"{sample.image} became unusable during the run ({problem.reason}). "
                            "Restore or remove the file and run again.") from problem
        if image.size != sample.size:
            raise DataError(f"{sample.image} changed size during the run ({sample.size[0]}x"
                            f"{sample.size[1]} -> {image.width}x{image.height} px), so its boxes "
                            "no longer fit. Restore the file and run again.")
        boxes = tv_tensors.BoundingBoxes(
            torch.tensor(sample.boxes, dtype=torch.float32).reshape(-1, 4),  # (N, 4)
            format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(image.height, image.width))
        labels = torch.tensor(sample.labels, dtype=torch.int64) + self.label_offset  # (N,)
        pixels = tv_tensors.Image(F.pil_to_tensor(image))  # (3, H, W) uint8
        out_image, target = self.transform(pixels, {"boxes": boxes, "labels": labels})
        return out_image.as_subclass(torch.Tensor), target


def collate_detection(batch: Sequence[tuple[torch.Tensor, Target]]
                      ) -> tuple[list[torch.Tensor], list[Target]]:
    """A batch as the two lists torchvision's detection models take (images may differ in
    size and boxes in number, so nothing is stacked)."""
    return [image for image, _ in batch], [target for _, target in batch]
