"""The exemplar memory of a continual-learning bundle: a few training images per class, kept
inside the bundle so the old classes can be rehearsed after their data is gone.

The images themselves are kept (re-encoded as JPEG, quality 90, the long side capped), not
features: the backbone changes while a continued model learns, and stored features would go
stale with it. ``BUNDLE/memory/memory.json`` lists ``{"file", "label"}`` per image plus how the
memory was chosen; the files sit beside it. Selection is class-balanced: each class gets an
equal share of the capacity (the remainder to the first classes), drawn at random with a
seed, like a class-wise reservoir over the data seen so far.

A bundle that reads its images through an intensity spec (CT windows, CLAHE: see
:mod:`vitkit.data.intensity`) keeps its exemplars as rendered by it, lossless (PNG), and the
record says so (``rendered``): they are read back as they are, never windowed twice.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vitkit.bundle import bundle_file
from vitkit.data.images import ImageProblem, load_rgb
from vitkit.data.intensity import IntensitySpec, load_image
from vitkit.data.layouts import Sample
from vitkit.errors import BundleError

MEMORY_DIR = "memory"
MEMORY_INDEX = "memory.json"
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Exemplar:
    """One remembered image: its file, its class, and whether the file is already rendered
    through the bundle's intensity spec (a memory image of a windowed model)."""

    path: Path
    label: str
    rendered: bool = False


def class_quotas(labels: Sequence[str], capacity: int) -> dict[str, int]:
    """How many exemplars each class keeps: ``capacity`` split evenly, the remainder to the
    first classes in ``labels``' order."""
    if not labels:
        return {}
    share, extra = divmod(max(0, capacity), len(labels))
    return {label: share + (1 if i < extra else 0) for i, label in enumerate(labels)}


def select_exemplars(candidates: Sequence[Exemplar], labels: Sequence[str], capacity: int,
                     seed: int = 0) -> list[Exemplar]:
    """A class-balanced random choice of at most ``capacity`` exemplars from ``candidates``.

    A class with fewer candidates than its quota keeps them all; its unused share is not
    passed on (the memory stays balanced, which is what rehearsal needs). The draw depends
    only on ``seed`` and the candidates' paths, not on their order.
    """
    by_class: dict[str, list[Exemplar]] = defaultdict(list)
    for item in candidates:
        by_class[item.label].append(item)
    chosen: list[Exemplar] = []
    for label, quota in class_quotas(labels, capacity).items():
        pool = sorted(by_class.get(label, []), key=lambda e: str(e.path))
        rng = random.Random(f"{seed}:{label}")
        chosen += pool if len(pool) <= quota else rng.sample(pool, quota)
    return chosen


def from_samples(samples: Sequence[Sample]) -> list[Exemplar]:
    return [Exemplar(s.path, s.label) for s in samples]


def write_memory(bundle: Path, exemplars: Sequence[Exemplar], max_side: int, seed: int,
                 capacity: int, max_pixels: int, intensity: IntensitySpec | None = None
                 ) -> dict[str, Any]:
    """Re-encodes ``exemplars`` into ``bundle/memory/`` (replacing any memory there as a whole,
    never leaving half of one) and returns the record for ``vitkit.json``: ``{"dir",
    "images", "per_class", "capacity", "max_side", "selection", "seed", "skipped"}`` (and
    ``rendered``, the spec, when ``intensity`` rendered them).

    An image that cannot be decoded any more is left out and counted in ``skipped``.
    """
    bundle = Path(bundle)
    staging = Path(tempfile.mkdtemp(prefix=".memory-", dir=bundle))
    index: list[dict[str, str]] = []
    skipped = 0
    try:
        for number, item in enumerate(exemplars):
            try:
                image, _ = (load_rgb(item.path, max_pixels) if item.rendered
                            else load_image(item.path, max_pixels, intensity))
            except ImageProblem:
                skipped += 1
                continue
            image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
            if intensity is None:
                name = f"{number:05d}.jpg"
                image.save(staging / name, format="JPEG", quality=JPEG_QUALITY)
            else:  # windowed values: no lossy re-encoding on top
                name = f"{number:05d}.png"
                image.save(staging / name, format="PNG")
            index.append({"file": name, "label": item.label})
        (staging / MEMORY_INDEX).write_text(json.dumps({"images": index}, indent=1) + "\n")
        target = bundle / MEMORY_DIR
        old = bundle / f".memory-old-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    per_class: dict[str, int] = defaultdict(int)
    for entry in index:
        per_class[entry["label"]] += 1
    record: dict[str, Any] = {
        "dir": MEMORY_DIR, "images": len(index), "per_class": dict(per_class),
        "capacity": capacity, "max_side": max_side, "selection": "class-balanced random",
        "seed": seed, "skipped": skipped}
    if intensity is not None:
        record["rendered"] = intensity.model_dump(mode="json")
    return record


def read_memory(bundle: Path, record: dict[str, Any] | None) -> list[Exemplar]:
    """The bundle's exemplars (files inside the bundle folder); [] when it keeps none.

    Raises:
        BundleError: The memory's index is missing or names a file outside the bundle.
    """
    if not record:
        return []
    folder = bundle_file(bundle, record.get("dir", MEMORY_DIR), "exemplar memory")
    index_path = folder / MEMORY_INDEX
    try:
        entries = json.loads(index_path.read_text())["images"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{index_path}: the exemplar memory's index cannot be read ({exc}). "
                          "Continue from a copy of the bundle, or give the old data with "
                          "--old-data.") from exc
    relative = Path(record.get("dir", MEMORY_DIR))
    rendered = bool(record.get("rendered"))
    return [Exemplar(bundle_file(bundle, str(relative / str(e["file"])), "exemplar"),
                     str(e["label"]), rendered) for e in entries]
