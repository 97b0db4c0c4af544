"""Turning what a user typed (files, folders, globs) into a list of image files."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif",
})


def find_images(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files as given, folders searched recursively for images, globs expanded.

    Returns the image paths (resolved, in a stable order, without duplicates) and the inputs
    that matched nothing.
    """
    found: list[Path] = []
    unmatched: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file()
                             and p.suffix.lower() in IMAGE_SUFFIXES
                             and not p.name.startswith("."))
        elif path.exists():
            matches = [path]
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        else:
            matches = []
        if not matches:
            unmatched.append(item)
        found.extend(matches)
    return list(dict.fromkeys(p.resolve() for p in found)), unmatched
