"""Reading a CSV manifest: one row per image, header ``path,label[,split]``."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from vitkit.errors import DataError

SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
"""Accepted split names (folder names or CSV values, case-insensitive) -> canonical split."""

_REQUIRED = ("path", "label")
_OPTIONAL = ("split",)
_EXAMPLE = "path,label,split\nimages/cat1.jpg,cat,train\nimages/dog7.jpg,dog,val"


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row with its path made absolute."""

    path: Path
    label: str
    split: str | None


def read_manifest(csv_path: Path) -> list[ManifestRow]:
    """Reads a CSV manifest; relative paths are taken relative to the CSV's folder.

    Files that do not exist are kept: validation reports them as "file not found".

    Raises:
        DataError: The file cannot be read, the header is not ``path,label[,split]``, a row
            lacks a path or label, a split value is unknown, or a file is listed twice.
    """
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(
            f"cannot read the manifest {csv_path}: {exc}. Save it as a UTF-8 CSV file with the "
            f"header path,label[,split], for example:\n{_EXAMPLE}"
        ) from exc
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"the manifest {csv_path} is empty. Add a header and one row per image:"
                        f"\n{_EXAMPLE}")
    columns = _parse_header(rows[0], csv_path)
    base = csv_path.parent
    seen: dict[Path, int] = {}
    out: list[ManifestRow] = []
    # Line numbers are 1-based and count the header, matching what an editor shows
    # (blank lines aside).
    for line, row in enumerate(rows[1:], start=2):
        cells = {name: (row[i].strip() if i < len(row) else "") for name, i in columns.items()}
        if not cells["path"] or not cells["label"]:
            raise DataError(
                f"{csv_path}, line {line}: every row needs a path and a label, got {row!r}. "
                "Fill in the missing value or delete the row."
            )
        path = Path(os.path.abspath(base / Path(cells["path"]).expanduser()))
        if path in seen:
            raise DataError(
                f"{csv_path}, line {line}: {cells['path']} is already listed on line "
                f"{seen[path]}. List each image once."
            )
        seen[path] = line
        out.append(ManifestRow(path, cells["label"], parse_split(cells.get("split", ""),
                                                                  csv_path, line)))
    return out


def _parse_header(header: list[str], csv_path: Path) -> dict[str, int]:
    names = [cell.strip().lower() for cell in header]
    allowed = set(_REQUIRED) | set(_OPTIONAL)
    missing = [name for name in _REQUIRED if name not in names]
    unknown = [name for name in names if name not in allowed]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if missing or unknown or duplicated:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown column(s) {', '.join(repr(n) for n in unknown)}")
        if duplicated:
            problems.append(f"repeated column(s) {', '.join(duplicated)}")
        raise DataError(
            f"the manifest {csv_path} has a bad header {','.join(header)!r}: "
            f"{'; '.join(problems)}. The first line must be path,label or path,label,split, "
            f"for example:\n{_EXAMPLE}"
        )
    return {name: names.index(name) for name in names}


def parse_split(value: str, csv_path: Path, line: int) -> str | None:
    if not value:
        return None
    split = SPLIT_ALIASES.get(value.lower())
    if split is None:
        raise DataError(
            f"{csv_path}, line {line}: unknown split {value!r}. Use train, val or test, or "
            "leave the cell empty to let vitkit assign a split."
        )
    return split
