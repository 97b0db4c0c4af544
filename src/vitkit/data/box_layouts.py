"""Reading detection annotations: where the images are and which boxes each one has.

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
  :func:`vitkit.data.boxes.assign_sample_splits` shares them out per defect type.

Nothing here opens an image: annotations that cannot even be read (a bad YOLO line, a COCO
annotation without a proper ``bbox``) are recorded as :class:`DroppedBox`, files that cannot
form an item (no image file, no mask, an unreadable label file) as
:class:`~vitkit.data.validate.SkippedImage`. :mod:`vitkit.data.boxes` checks the rest.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy import ndimage

from vitkit.bundle import describe_validation_error
from vitkit.data.annotated import read_class_names
from vitkit.data.files import find_images
from vitkit.data.manifest import SPLIT_ALIASES
from vitkit.data.masks import NO_IMAGE, NO_MASK
from vitkit.data.mvtec import GOOD, MASK_SUFFIX, mvtec_test_images
from vitkit.data.validate import SkippedImage
from vitkit.errors import DataError

DetectionLayout = Literal["coco", "yolo", "mvtec"]
MvtecClasses = Literal["single", "per_defect"]
Box = tuple[float, float, float, float]
"""XYXY in pixels."""

# Reason kinds (the text before any " (detail)") of what cannot be read.
UNKNOWN_CLASS = "unknown class"
BAD_LINE = "bad line"
BAD_ANNOTATION = "bad annotation"
UNKNOWN_IMAGE = "unknown image"
CROWD = "crowd region"
UNREADABLE_LABELS = "unreadable label file"

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
