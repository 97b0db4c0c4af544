"""Turning what a user typed (files, folders, globs) into a list of image files."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from vitkit.data.dicom import DICOM_SUFFIXES, is_dicom_file
from vitkit.errors import NothingProcessedError

IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif",
})


def find_images(inputs: Sequence[str], dicom: bool = False) -> tuple[list[Path], list[str]]:
    """Files as given, folders searched recursively for images, globs expanded.

    Returns the image paths (as the user typed them, so that symlinked data shows its link
    path; in a stable order, without duplicates of the same file) and the inputs that matched
    nothing (:func:`why_unmatched` says why). With ``dicom``, folders also give DICOM files:
    ``.dcm`` / ``.dicom`` and files without an extension that carry the DICOM signature.
    """
    found: list[Path] = []
    unmatched: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file()
                             and not p.name.startswith(".")
                             and (p.suffix.lower() in IMAGE_SUFFIXES
                                  or (dicom and _is_dicom(p))))
        elif path.exists():
            matches = [path]
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        else:
            matches = []
        if not matches:
            unmatched.append(item)
        found.extend(matches)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values()), unmatched


def _is_dicom(path: Path) -> bool:
    # Scanners name files IM0001 or by UID (1.2.840.113619.2.1): only names like those are
    # opened to look for the signature, so a folder of JPEGs costs no extra reads.
    suffix = path.suffix.lower()
    return (suffix in DICOM_SUFFIXES or not suffix or suffix[1:].isdigit()) \
        and is_dicom_file(path)


def why_unmatched(item: str) -> str:
    """Why an input of :func:`find_images` gave no image, in words a user can act on."""
    path = Path(item)
    if path.is_dir():
        return ("no images in this folder (looked for "
                f"{', '.join(sorted(s.lstrip('.') for s in IMAGE_SUFFIXES))})")
    if any(ch in item for ch in "*?[") and not path.exists():
        return "no file matches this pattern"
    if not path.exists():
        return "no such file or folder"
    return "not an image file"


def require_images(found: Sequence[Path], unmatched: Sequence[str]) -> None:
    """Stops before any slow work when no input named an image.

    Raises:
        NothingProcessedError: Every input was missing, an empty folder or an empty glob;
            the message gives each one's reason.
    """
    if found:
        return
    raise NothingProcessedError(
        f"no images to process ({list_failures([(i, why_unmatched(i)) for i in unmatched])}). "
        "Give image files, folders of images or globs such as 'shots/*.png'.")


def list_failures(failures: Sequence[tuple[str, str]], shown: int = 5) -> str:
    """``"a.jpg: not an image; b/: no images in this folder; and 3 more"``."""
    text = "; ".join(f"{path}: {reason}" for path, reason in failures[:shown])
    more = f"; and {len(failures) - shown} more" if len(failures) > shown else ""
    return (text or "no paths given") + more
