"""Finding the images and their labels, and assigning train/val/test splits.

Three layouts are recognised:

* ``folders``: ``DATA/<class>/**/<image>``, one folder per class;
* ``splits``: ``DATA/train/<class>/...`` plus optionally ``val/`` (or ``valid/``,
  ``validation/``) and ``test/``, each laid out like ``folders``;
* ``csv``: a manifest file with the header ``path,label[,split]``.

Files are not filtered by extension here, so that broken or oddly named files reach validation
and are reported rather than silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from vitkit.data.manifest import SPLIT_ALIASES, read_manifest
from vitkit.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
UNASSIGNED = "unassigned"
"""Key used by :func:`class_counts` for samples without a split."""

# Files that sit next to images but are never data.
_IGNORED_SUFFIXES = frozenset({".csv", ".txt", ".md", ".json"})
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})
_LAYOUT_HELP = (
    "Expected one of: a folder per class (DATA/cat/1.jpg, DATA/dog/2.jpg); split folders, each "
    "with a folder per class (DATA/train/cat/1.jpg, DATA/val/cat/3.jpg, optional DATA/test/); "
    "or a CSV manifest with the header path,label[,split]."
)


@dataclass(frozen=True)
class Sample:
    """One image and its label.

    Attributes:
        path: Absolute path of the file (it may not exist when it came from a manifest).
        label: Class name.
        split: ``"train"``, ``"val"``, ``"test"``, or ``None`` when not yet assigned.
    """

    path: Path
    label: str
    split: str | None


@dataclass
class ScannedData:
    """What :func:`scan` found.

    Attributes:
        root: The folder or CSV file that was scanned (absolute).
        layout: Which layout was detected.
        samples: All candidate files, sorted by split, label and path.
        classes: Sorted class names.
    """

    root: Path
    layout: Literal["folders", "splits", "csv"]
    samples: list[Sample]
    classes: list[str]


def scan(root: str | Path) -> ScannedData:
    """Detects the data layout under ``root`` and lists every candidate image with its label.

    Args:
        root: A folder of images (``folders`` or ``splits`` layout) or a ``.csv`` manifest.

    Raises:
        DataError: ``root`` does not exist, is a file that is not a CSV manifest, the manifest
            is malformed, or no class folders (or class folders without files) are found.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.exists():
        raise DataError(f"data path {root} does not exist. Check the path. {_LAYOUT_HELP}")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(f"{root} is a file but not a .csv manifest. Give a folder of images "
                            f"or a CSV manifest. {_LAYOUT_HELP}")
        rows = read_manifest(root)
        if not rows:
            raise DataError(f"the manifest {root} lists no images. Add one row per image "
                            "below the header path,label[,split].")
        return _scanned(root, "csv", [Sample(row.path, row.label, row.split) for row in rows])
    split_dirs = _split_dirs(root)
    if split_dirs and "train" not in split_dirs:
        found = ", ".join(f"{p.name}/" for p in split_dirs.values())
        raise DataError(f"{root} has {found} but no train/ folder. Add DATA/train/<class>/ with "
                        "the training images, or use a folder per class without split folders.")
    parts: list[tuple[str | None, Path]] = [*split_dirs.items()] or [(None, root)]
    samples: list[Sample] = []
    class_dirs: list[Path] = []
    for split, folder in parts:
        split_samples, split_class_dirs = _scan_class_folders(folder, split)
        samples += split_samples
        class_dirs += split_class_dirs
    labels = {s.label for s in samples}
    empty = [str(d) for d in class_dirs if d.name not in labels]
    if empty:
        raise DataError(f"class folder(s) without any image: {', '.join(empty)}. Add images "
                        "to them or remove them.")
    return _scanned(root, "splits" if split_dirs else "folders", samples)


def _scanned(root: Path, layout: Literal["folders", "splits", "csv"],
             samples: list[Sample]) -> ScannedData:
    samples = sorted(samples, key=_sort_key)
    return ScannedData(root, layout, samples, sorted({s.label for s in samples}))


def _sort_key(sample: Sample) -> tuple[int, str, str]:
    rank = SPLITS.index(sample.split) if sample.split in SPLITS else len(SPLITS)
    return rank, sample.label, str(sample.path)


def _visible_subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_dirs(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in _visible_subdirs(root):
        split = SPLIT_ALIASES.get(folder.name.lower())
        if split is None:
            continue
        if split in found:
            raise DataError(f"{root} has both {found[split].name}/ and {folder.name}/ as the "
                            f"{split} split. Keep one of them.")
        found[split] = folder
    return {split: found[split] for split in SPLITS if split in found}


def _scan_class_folders(folder: Path, split: str | None) -> tuple[list[Sample], list[Path]]:
    """Returns the samples under ``folder/<class>/`` and the class folders themselves."""
    class_dirs = _visible_subdirs(folder)
    if not class_dirs:
        loose = sum(1 for _ in _candidate_files(folder))
        raise DataError(f"no class folders found in {folder} ({loose} loose file(s)). Put each "
                        f"class's images in its own folder, DATA/<class>/. {_LAYOUT_HELP}")
    samples: list[Sample] = []
    for class_dir in class_dirs:
        samples += [Sample(path, class_dir.name, split) for path in _candidate_files(class_dir)]
    if not samples:
        raise DataError(f"the class folders in {folder} contain no images. Put images in "
                        f"{folder}/<class>/.")
    return samples, class_dirs


def _candidate_files(folder: Path) -> Iterable[Path]:
    """Yields every visible file under ``folder`` that could be an image, unsorted."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath, name)
            if (name.startswith(".") or name.lower() in _IGNORED_NAMES
                    or path.suffix.lower() in _IGNORED_SUFFIXES):
                continue
            # A dangling symlink is kept so that validation reports it as "file not found".
            if path.is_file() or (path.is_symlink() and not path.exists()):
                yield path


def assign_splits(samples: list[Sample], val_fraction: float = 0.2, test_fraction: float = 0.0,
                  seed: int = 0) -> list[Sample]:
    """Gives a split to every sample without one, stratified per class and seeded.

    Samples that already have a split keep it. Within each class the unassigned samples are
    ordered by path and shuffled with a generator seeded by ``seed`` and the class name, so the
    result does not depend on filesystem order or on which other classes exist. A class with at
    least 2 unassigned images gets at least 1 validation image (when ``val_fraction > 0``), one
    with at least 3 gets at least 1 test image (when ``test_fraction > 0``), and at least 1 image
    always stays in train.

    Args:
        samples: Samples in any order; the returned list keeps that order.
        val_fraction: Fraction of each class's unassigned images that go to ``"val"``.
        test_fraction: Fraction of each class's unassigned images that go to ``"test"``.
        seed: Same seed, same split.

    Raises:
        ConfigError: The fractions are negative or add up to 1 or more.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ConfigError(f"invalid split fractions val={val_fraction}, test={test_fraction}: "
                          "each must be at least 0 and together less than 1 (e.g. val 0.2).")
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, sample in enumerate(samples):
        if sample.split is None:
            by_class[sample.label].append(i)
    assigned = list(samples)
    for label, indices in by_class.items():
        indices.sort(key=lambda i: str(samples[i].path))
        # A string seed is hashed deterministically (not with the per-process hash salt).
        random.Random(f"{seed}:{label}").shuffle(indices)
        n_val, n_test = _split_sizes(len(indices), val_fraction, test_fraction)
        for rank, i in enumerate(indices):
            split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            assigned[i] = replace(samples[i], split=split)
    return assigned


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 and n >= 2 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 and n >= 3 else 0
    while n_val + n_test > n - 1:  # keep at least one training image
        if n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def ensure_validation_split(data: ScannedData, val_fraction: float = 0.2, seed: int = 0,
                            test_fraction: float = 0.0) -> list[Sample]:
    """Returns the samples with a split each, including a validation split.

    Unassigned samples (folder layout, CSV rows without a split) are split into train/val
    (and test when ``test_fraction > 0``). If there is still no validation split (e.g. only
    ``train/`` exists), one is carved out of train, stratified per class; likewise a test split
    when ``test_fraction > 0`` and none exists. Existing val/test samples are never moved.

    Args:
        data: What :func:`scan` returned.
        val_fraction: Fraction of each class held out for validation when one is needed.
        seed: Same seed, same split.
        test_fraction: Fraction of each class held out for testing when no test split exists.

    Raises:
        DataError: No validation split can be made (no class has 2 or more training images).
        ConfigError: Invalid fractions, or ``val_fraction`` is 0 but there is no val split.
    """
    samples = data.samples
    if any(s.split is None for s in samples):
        has_test = any(s.split == "test" for s in samples)
        samples = assign_splits(samples, val_fraction, 0.0 if has_test else test_fraction, seed)
    carve_val = not any(s.split == "val" for s in samples)
    carve_test = test_fraction > 0 and not any(s.split == "test" for s in samples)
    if carve_val and val_fraction <= 0:
        raise ConfigError(f"{data.root} has no validation split and the validation fraction is "
                          "0. Set a validation fraction above 0 (e.g. 0.2) or add a val split.")
    if carve_val or carve_test:
        from_train = [replace(s, split=None) if s.split == "train" else s for s in samples]
        samples = assign_splits(from_train, val_fraction if carve_val else 0.0,
                                test_fraction if carve_test else 0.0, seed)
    if not any(s.split == "val" for s in samples):
        raise DataError(f"cannot make a validation split from {data.root}: every class has a "
                        "single training image. Add at least 2 images per class, or give a "
                        "val split (DATA/val/<class>/ or a split column in the manifest).")
    return samples


def class_counts(samples: Iterable[Sample]) -> dict[str, dict[str, int]]:
    """Counts images per split and class: ``{"train": {"cat": 40, ...}, "val": {...}}``.

    Splits come in train, val, test order (then ``"unassigned"`` for samples without one);
    classes are sorted. Only splits and classes that occur are present.
    """
    counts = Counter((s.split or UNASSIGNED, s.label) for s in samples)
    order = {name: rank for rank, name in enumerate((*SPLITS, UNASSIGNED))}
    result: dict[str, dict[str, int]] = {}
    for split, label in sorted(counts, key=lambda key: (order.get(key[0], len(order)), key)):
        result.setdefault(split, {})[label] = counts[(split, label)]
    return result


def data_fingerprint(samples: list[Sample]) -> str:
    """A short hash of which files (by name, size and label) went into each split."""
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: str(s.path)):
        size = s.path.stat().st_size if s.path.exists() else -1
        digest.update(json.dumps([s.path.name, s.label, s.split, size]).encode())
    return digest.hexdigest()[:16]
