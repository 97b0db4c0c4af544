"""Segmentation data: images paired with class masks.

Two layouts are recognised (:func:`find_segmentation_layout`):

* ``masks``: ``DATA/images/<name>.<ext>`` with ``DATA/masks/<name>.<ext>`` (the same path
  below the two folders, any image extension; PNG is lossless and the one to use). Optionally
  per split: ``DATA/train/{images,masks}/``, ``DATA/val/{images,masks}/`` (also ``valid``,
  ``validation``, ``test``). Class names come from ``DATA/data.yaml`` (``names:``) or
  ``DATA/classes.txt``; without either the classes are ``background`` and ``defect``.
* ``mvtec``: ``DATA/train/good/``, ``DATA/test/<defect>/`` and
  ``DATA/ground_truth/<defect>/<name>_mask.png`` (see :mod:`vitkit.data.mvtec`). Normal
  (``good``) images get an all-background mask. The classes are ``background`` and ``defect``,
  or ``background`` and one class per defect folder. MVTec's own train/test division is for
  anomaly detection (its train holds only normal images), so these pairs come without a split:
  :func:`assign_pair_splits` shares them out per defect type.

How a mask's pixels become class indices (:func:`mask_to_classes`):

* two classes and a grey-level mask (mode ``1``, ``L``, or grey RGB): binary, the pixels are
  0 and 255 (or 0 and 1), and 255 (1) is class 1;
* a palette (``P``) mask, or a grey-level one with more than two classes: the pixel values are
  the class indices; 255 is :data:`IGNORE_INDEX`, the Pascal VOC mark for pixels no loss should
  count (give it to the loss as ``ignore_index``).

A pair whose image or mask cannot be used (unreadable, missing, another size, values that are
no class) is skipped and reported like an unusable image in classification
(:class:`~vitkit.data.validate.SkippedImage`: the file at fault and the reason), never a crash.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from vitkit.data.annotated import check_all, group_splits, plural, read_class_names, reason_counts
from vitkit.data.files import find_images
from vitkit.data.images import DEFAULT_MAX_PIXELS, ImageProblem, load_raw, load_rgb
from vitkit.data.joint import IMAGENET_MEAN, IMAGENET_STD, JointAugmentation, joint_transform
from vitkit.data.manifest import SPLIT_ALIASES
from vitkit.data.mvtec import GOOD, MASK_SUFFIX, mvtec_test_images
from vitkit.data.validate import SkippedImage
from vitkit.errors import DataError

SegmentationLayout = Literal["masks", "mvtec"]
MvtecClasses = Literal["single", "per_defect"]

BINARY_CLASSES = ("background", "defect")
"""The classes of binary masks when no file names them."""
IGNORE_INDEX = 255
"""In an index mask: a pixel that belongs to no class (Pascal VOC's boundary mark)."""

# Reason kinds (the text before any " (detail)"), beside those of vitkit.data.images.
NO_MASK = "no mask"
NO_IMAGE = "no image"
AMBIGUOUS_MASK = "more than one mask"
SIZE_DIFFERS = "mask size differs from the image"
BAD_VALUES = "mask values are not 0 and 255"
UNKNOWN_CLASS = "mask holds unknown class indices"
BAD_MODE = "unsupported mask mode"

_GREY_MODES = frozenset({"L", "RGB", "RGBA"})
_INDEX_MODES = frozenset({"P", "L", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_LAYOUT_HELP = (
    "Expected one of: DATA/images/ and DATA/masks/ with a mask per image under the same name "
    "(images/a.jpg + masks/a.png), optionally per split (DATA/train/images/, DATA/train/masks/, "
    "DATA/val/images/, DATA/val/masks/); or an MVTec folder (DATA/train/good/, "
    "DATA/test/<defect>/, DATA/ground_truth/<defect>/<name>_mask.png)."
)


@dataclass(frozen=True)
class MaskPair:
    """One image and its mask.

    Attributes:
        image: The image file.
        mask: The mask file; ``None`` means every pixel is background (an MVTec normal image).
        split: ``"train"``, ``"val"``, ``"test"``, or ``None`` when not yet assigned.
        defect: The MVTec folder (``"good"`` for normal images); ``None`` in the masks layout.
        foreground: For MVTec's binary masks, the class of their white pixels; ``None`` when the
            mask's values are the classes themselves.
    """

    image: Path
    mask: Path | None
    split: str | None = None
    defect: str | None = None
    foreground: int | None = None


@dataclass
class SegmentationData:
    """What :func:`scan_segmentation` found.

    Attributes:
        root: The data folder (absolute).
        layout: Which layout was detected.
        pairs: The candidate pairs, sorted by split and image path; not yet opened.
        classes: Class names; a mask value (or ``foreground``) ``i`` is ``classes[i]``.
        skipped: Files that cannot form a pair: images without a mask, masks without an image.
    """

    root: Path
    layout: SegmentationLayout
    pairs: list[MaskPair]
    classes: list[str]
    skipped: list[SkippedImage] = field(default_factory=list)


@dataclass
class MaskReport:
    """The outcome of :func:`validate_pairs`.

    Attributes:
        usable: Pairs whose image and mask decoded and agree, in input order.
        skipped: The scan's skipped files, then the pairs that failed, each with the file at
            fault (the image or the mask) and the reason.
        classes: The class names.
        class_images: Class name -> number of usable masks in which it occurs (every class,
            0 for one that never occurs).
    """

    usable: list[MaskPair]
    skipped: list[SkippedImage]
    classes: list[str]
    class_images: dict[str, int]

    def summary(self) -> str:
        """One line, e.g. ``"38 usable pairs, 2 skipped (1 no mask, 1 mask size differs from
        the image); masks with background 38, defect 30"``."""
        line = f"{plural(len(self.usable), 'usable pair')}, {len(self.skipped)} skipped"
        if self.skipped:
            line += f" ({reason_counts(s.reason for s in self.skipped)})"
        counts = ", ".join(f"{name} {n}" for name, n in self.class_images.items())
        return f"{line}; masks with {counts}"


def find_segmentation_layout(path: str | Path) -> SegmentationLayout:
    """Which segmentation layout ``path`` holds.

    Raises:
        DataError: ``path`` is not a folder, or holds neither layout; the message lists what
            it holds and the layouts expected.
    """
    root = Path(path)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is a file, not a folder"
        raise DataError(f"segmentation data {root} {what}. {_LAYOUT_HELP}")
    if _pair_folders(root):
        return "masks"
    if (root / "test").is_dir() and ((root / "ground_truth").is_dir()
                                     or (root / "train" / GOOD).is_dir()):
        return "mvtec"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir()
                     if not p.name.startswith("."))
    shown = ", ".join(entries[:12]) + (f", and {len(entries) - 12} more" if len(entries) > 12
                                       else "")
    raise DataError(f"{root} is not a segmentation data folder (it holds: {shown or 'nothing'}). "
                    f"{_LAYOUT_HELP}")


def _pair_folders(root: Path) -> list[tuple[str | None, Path]]:
    """``[(None, root)]`` when root holds images/ and masks/, else the split folders that do."""
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return [(None, root)]
    found: dict[str, Path] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        split = SPLIT_ALIASES.get(folder.name.lower())
        if split is None or not (folder / "images").is_dir():
            continue
        if split in found:
            raise DataError(f"{root} has both {found[split].name}/ and {folder.name}/ as the "
                            f"{split} split. Keep one of them.")
        if not (folder / "masks").is_dir():
            raise DataError(f"{folder / 'images'} has no masks folder beside it. Put the masks "
                            f"in {folder / 'masks'}/, one per image under the image's name.")
        found[split] = folder
    return sorted(found.items(), key=lambda item: ("train", "val", "test").index(item[0]))


def scan_segmentation(path: str | Path,
                      mvtec_classes: MvtecClasses = "single") -> SegmentationData:
    """Finds the image/mask pairs under ``path`` without opening them.

    Args:
        path: A data folder in one of the layouts (module docstring).
        mvtec_classes: For MVTec: ``"single"`` gives the classes background and defect,
            ``"per_defect"`` background and one class per defect folder.

    Raises:
        DataError: No layout matches, a class-names file is malformed, or no pair is found.
    """
    root = Path(os.path.abspath(Path(path).expanduser()))
    layout = find_segmentation_layout(root)
    data = _scan_mvtec(root, mvtec_classes) if layout == "mvtec" else _scan_masks(root)
    if not data.pairs:
        found = "; ".join(f"{s.path}: {s.reason}" for s in data.skipped[:3])
        raise DataError(f"no image/mask pairs in {root}"
                        + (f" ({found})" if found else " (no images)") + f". {_LAYOUT_HELP}")
    return data


def _scan_masks(root: Path) -> SegmentationData:
    named = read_class_names(root)
    classes = named[0] if named else list(BINARY_CLASSES)
    if len(classes) < 2:
        raise DataError(f"{named[1] if named else root} names one class; segmentation needs at "
                        "least two, the first being the background (e.g. background, defect).")
    pairs: list[MaskPair] = []
    skipped: list[SkippedImage] = []
    for split, folder in _pair_folders(root):
        masks: dict[Path, list[Path]] = defaultdict(list)
        for mask in _image_files(folder / "masks"):
            masks[mask.relative_to(folder / "masks").with_suffix("")].append(mask)
        paired: set[Path] = set()
        for image in _image_files(folder / "images"):
            key = image.relative_to(folder / "images").with_suffix("")
            found = masks.get(key, [])
            if len(found) == 1:
                pairs.append(MaskPair(image, found[0], split))
                paired.add(key)
            elif not found:
                where = (folder / "masks" / key).with_suffix(".png")
                skipped.append(SkippedImage(image, f"{NO_MASK} (looked for {where} or the same "
                                                   "name with another image extension)",
                                            split=split))
            else:
                paired.add(key)
                names = ", ".join(m.name for m in found)
                skipped.append(SkippedImage(image, f"{AMBIGUOUS_MASK} ({names}; keep one)",
                                            split=split))
        for key in sorted(masks.keys() - paired):
            for mask in masks[key]:
                skipped.append(SkippedImage(mask, f"{NO_IMAGE} (no {folder / 'images' / key}.* "
                                                  "for this mask)", split=split))
    return SegmentationData(root, "masks", pairs, classes, skipped)


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` by extension, recursively, sorted; broken ones included
    (validation reports them)."""
    return find_images([str(folder)])[0]


def _scan_mvtec(root: Path, mvtec_classes: MvtecClasses) -> SegmentationData:
    tests = mvtec_test_images(root)
    defects = sorted({t.defect for t in tests} - {GOOD})
    classes = ["background", "defect"] if mvtec_classes == "single" else ["background", *defects]
    good = root / "train" / GOOD
    pairs = [MaskPair(p, None, None, GOOD) for p in (_image_files(good) if good.is_dir() else [])]
    skipped: list[SkippedImage] = []
    for test in tests:
        if test.defect == GOOD:
            pairs.append(MaskPair(test.path, None, None, GOOD))
        elif test.mask is None:
            where = root / "ground_truth" / test.defect / f"{test.path.stem}{MASK_SUFFIX}.png"
            skipped.append(SkippedImage(test.path, f"{NO_MASK} (looked for {where})", test.defect))
        else:
            foreground = 1 if mvtec_classes == "single" else classes.index(test.defect)
            pairs.append(MaskPair(test.path, test.mask, None, test.defect, foreground))
    return SegmentationData(root, "mvtec", pairs, classes, skipped)


def mask_to_classes(mask: Image.Image, n_classes: int) -> np.ndarray:
    """A mask image's class index per pixel, (H, W) int64 (module docstring: the encodings).

    Raises:
        ImageProblem: The mode cannot hold classes (colour RGB, float), a binary mask holds
            other values than 0 and 255 (or 0 and 1), or an index is not below ``n_classes``
            (255 aside).
    """
    mode = mask.mode
    if mode == "1":
        return np.asarray(mask, dtype=np.int64)
    if mode in ("RGB", "RGBA"):
        pixels = np.asarray(mask)
        grey = (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
        opaque = mode == "RGB" or bool((pixels[..., 3] == 255).all())
        if not (grey and opaque):
            raise ImageProblem(f"{BAD_MODE} ({mode} with colours or transparency; save masks as "
                               "8-bit grey (0/255 for two classes) or palette PNG)")
        values = pixels[..., 0].astype(np.int64)
    elif mode in _INDEX_MODES:
        values = np.asarray(mask).astype(np.int64)
    else:
        raise ImageProblem(f"{BAD_MODE} ({mode}; save masks as 8-bit grey or palette PNG)")
    present = np.unique(values)
    if mode in _GREY_MODES and n_classes == 2:
        if set(present.tolist()) <= {0, 255}:
            return (values == 255).astype(np.int64)
        if set(present.tolist()) <= {0, 1}:
            return values
        raise ImageProblem(f"{BAD_VALUES} ({_listed(present)}; a binary mask holds only 0 and "
                           "255, or 0 and 1: save it as PNG, not JPEG, with no smoothing)")
    unknown = present[(present >= n_classes) & (present != IGNORE_INDEX)]
    if unknown.size:
        raise ImageProblem(f"{UNKNOWN_CLASS} ({_listed(unknown)}; the {n_classes} classes are "
                           f"0..{n_classes - 1}, and {IGNORE_INDEX} marks pixels to ignore)")
    return values


def _listed(values: np.ndarray, shown: int = 8) -> str:
    text = ", ".join(str(v) for v in values[:shown].tolist())
    return text + (f", … {values.size - shown} more" if values.size > shown else "")


def read_mask(pair: MaskPair, n_classes: int, image_size: tuple[int, int],
              max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The pair's class index per pixel, (H, W) int64, checked against the image's size.

    Args:
        pair: The pair.
        n_classes: Number of classes.
        image_size: The image's (width, height) after EXIF orientation, as PIL gives it.
        max_pixels: Largest accepted width * height.

    Raises:
        ImageProblem: The mask cannot be decoded, has another size than the image, or holds
            values that are no class.
    """
    width, height = image_size
    if pair.mask is None:
        return np.zeros((height, width), dtype=np.int64)
    mask = load_raw(pair.mask, max_pixels)
    if mask.size != image_size:
        raise ImageProblem(f"{SIZE_DIFFERS} (mask {mask.width}x{mask.height} px, image "
                           f"{width}x{height} px)")
    if pair.foreground is None:
        return mask_to_classes(mask, n_classes)
    return mask_to_classes(mask, 2) * pair.foreground


def validate_pairs(data: SegmentationData, max_pixels: int = DEFAULT_MAX_PIXELS,
                   progress: bool = True, workers: int = 2) -> MaskReport:
    """Decodes every image and mask once and sorts the pairs into usable and skipped.

    Args:
        data: What :func:`scan_segmentation` returned.
        max_pixels: Largest accepted width * height, for images and masks.
        progress: Show a progress bar on stderr.
        workers: Number of threads decoding.
    """
    n_classes = len(data.classes)

    def check(pair: MaskPair) -> SkippedImage | list[int]:
        try:
            image, _ = load_rgb(pair.image, max_pixels)
        except ImageProblem as problem:
            return SkippedImage(pair.image, problem.reason, pair.defect, pair.split)
        try:
            classes = read_mask(pair, n_classes, image.size, max_pixels)
        except ImageProblem as problem:
            return SkippedImage(pair.mask or pair.image, problem.reason, pair.defect, pair.split)
        return np.unique(classes).tolist()

    outcomes = check_all(data.pairs, check, workers, progress, "Checking images and masks")
    usable: list[MaskPair] = []
    skipped = list(data.skipped)
    seen: Counter[int] = Counter()
    for pair, outcome in zip(data.pairs, outcomes, strict=True):
        if isinstance(outcome, SkippedImage):
            skipped.append(outcome)
        else:
            usable.append(pair)
            seen.update(outcome)
    class_images = {name: seen[i] for i, name in enumerate(data.classes)}
    return MaskReport(usable, skipped, list(data.classes), class_images)


def check_pairs_usable(report: MaskReport) -> None:
    """Raises unless the usable pairs can train a segmenter: some pairs, and some foreground.

    Raises:
        DataError: No usable pair (with the first reasons), or no mask marks any class but
            the background.
    """
    if not report.usable:
        examples = "; ".join(f"{s.path}: {s.reason}" for s in report.skipped[:3])
        raise DataError(f"no usable image/mask pairs: all {len(report.skipped)} were skipped "
                        f"({reason_counts(s.reason for s in report.skipped)}), e.g. {examples}. "
                        "Fix or replace those files.")
    if not any(n for name, n in list(report.class_images.items())[1:]):
        raise DataError(f"none of the {len(report.usable)} usable masks marks a class other than "
                        f"{report.classes[0]!r}, so there is nothing to segment. Check that the "
                        "masks are the right files (white or class-index pixels on the objects).")


def assign_pair_splits(pairs: Sequence[MaskPair], val_fraction: float = 0.2, seed: int = 0,
                       test_fraction: float = 0.0) -> list[MaskPair]:
    """Gives a split to every pair without one: seeded, stratified per MVTec defect type (all
    pairs together in the masks layout); pairs with a split keep it.

    Raises:
        ConfigError: The fractions are negative or add up to 1 or more.
    """
    keys = [(p.image, p.defect or "all", p.split) for p in pairs]
    splits = group_splits(keys, val_fraction, test_fraction, seed)
    return [p if p.split == s else replace(p, split=s) for p, s in zip(pairs, splits, strict=True)]


def segmentation_transform(size: int | tuple[int, int] | None, train: bool,
                           augment: JointAugmentation | None = None,
                           mean: Sequence[float] | None = IMAGENET_MEAN,
                           std: Sequence[float] | None = IMAGENET_STD) -> v2.Compose:
    """The joint image+mask transform (:func:`~vitkit.data.joint.joint_transform`): for
    training, random flips, a small affine and colour jitter; then resize to ``size`` (masks
    with nearest-neighbour sampling), float, normalise with ``mean`` and ``std``."""
    return joint_transform(size, train, augment, mean, std)


class SegmentationDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images and their masks: ``(image float (3, H, W), mask int64 (H, W))``.

    Args:
        pairs: The pairs, normally the usable ones from :func:`validate_pairs`.
        classes: The class names (their number bounds the mask values).
        transform: A joint transform over ``(tv_tensors.Image, tv_tensors.Mask)``, e.g.
            :func:`segmentation_transform`; ``None`` only scales the image to 0..1.
        max_pixels: Largest accepted width * height.
    """

    def __init__(self, pairs: Sequence[MaskPair], classes: Sequence[str],
                 transform: v2.Transform | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.pairs = list(pairs)
        self.classes = list(classes)
        self.transform = transform or joint_transform(None, False, mean=None, std=None)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pairs[i]
        try:
            image, _ = load_rgb(pair.image, self.max_pixels)
            classes = read_mask(pair, len(self.classes), image.size, self.max_pixels)
        except ImageProblem as problem:
            # Validation accepted this pair, so a file changed since; stop rather than train
            # on a silently different data set.
            raise DataError(f"{pair.image} or its mask became unusable during the run "
                            f"({problem.reason}). Restore or remove the pair and run "
                            "again.") from problem
        pixels = tv_tensors.Image(F.pil_to_tensor(image))  # (3, H, W) uint8
        mask = tv_tensors.Mask(torch.from_numpy(classes))  # (H, W) int64
        out_image, out_mask = self.transform(pixels, mask)
        return out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor).long()
