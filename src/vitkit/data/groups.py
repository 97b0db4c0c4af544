"""A CSV that assigns images to groups (for fairness), and matching its rows to samples.

The file has a header with a ``path`` column and a group column (``group`` unless told
otherwise, e.g. ``site`` or ``camera``). A row's path is matched to an image by, in order:
the path itself (absolute, or relative to the working folder), the path relative to the data
folder, the path relative to the CSV's folder, and finally the bare file name when exactly one
image has that name. Rows that match no image and images that no row names are counted and
returned, never dropped silently.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitkit.errors import DataError

DEFAULT_GROUP_COLUMN = "group"
_EXAMPLE = "path,group\nval/ants/1.jpg,site-a\nval/bees/7.jpg,site-b"


@dataclass(frozen=True)
class GroupRow:
    """One CSV row: its line number (header = line 1), the path as written, its group."""

    line: int
    path: str
    group: str


@dataclass
class GroupMatch:
    """Which group each image belongs to, and what could not be matched.

    Attributes:
        groups: Image path (as in the samples) -> group.
        unmatched_rows: Rows naming no known image (or a file name several images share).
        ambiguous_rows: The subset of ``unmatched_rows`` whose file name several images share.
    """

    groups: dict[Path, str]
    unmatched_rows: list[GroupRow] = field(default_factory=list)
    ambiguous_rows: list[GroupRow] = field(default_factory=list)


def read_group_csv(csv_path: Path, column: str = DEFAULT_GROUP_COLUMN
                   ) -> tuple[str, list[GroupRow]]:
    """Reads ``csv_path``; returns the attribute name (the group column) and its rows.

    Raises:
        DataError: The file cannot be read, has no ``path`` or no ``column`` in its header, a
            row lacks a path or a group, or has fewer cells than the header (the message names
            the line).
    """
    csv_path = Path(csv_path)
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read the group file {csv_path}: {exc}. Give a UTF-8 CSV file "
                        f"with a header, for example:\n{_EXAMPLE}") from exc
    numbered = [(i, row) for i, row in enumerate(lines, start=1)
                if any(cell.strip() for cell in row)]
    if not numbered:
        raise DataError(f"the group file {csv_path} is empty. Add a header and one row per "
                        f"image:\n{_EXAMPLE}")
    header_line, header = numbered[0]
    names = [cell.strip() for cell in header]
    lowered = [name.lower() for name in names]
    missing = [want for want in ("path", column) if want.lower() not in lowered]
    if missing:
        raise DataError(
            f"{csv_path}, line {header_line}: the header {','.join(names)!r} has no "
            f"{' and no '.join(repr(m) for m in missing)} column. The file needs a 'path' "
            f"column and the group column (--group-column, default 'group'), e.g.:\n{_EXAMPLE}")
    path_at, group_at = lowered.index("path"), lowered.index(column.lower())
    rows = []
    for line, row in numbered[1:]:
        if len(row) <= max(path_at, group_at):
            raise DataError(f"{csv_path}, line {line}: {len(row)} cell(s), but the header has "
                            f"{len(names)}. Fill in the row or delete it.")
        path, group = row[path_at].strip(), row[group_at].strip()
        if not path or not group:
            what = "path" if not path else f"{names[group_at]} value"
            raise DataError(f"{csv_path}, line {line}: the {what} is empty ({row!r}). Fill it "
                            "in or delete the row.")
        rows.append(GroupRow(line, path, group))
    if not rows:
        raise DataError(f"the group file {csv_path} has a header but no rows. Add one row per "
                        f"image:\n{_EXAMPLE}")
    return names[group_at], rows


def match_groups(rows: Sequence[GroupRow], image_paths: Sequence[Path], data_root: Path,
                 csv_path: Path) -> GroupMatch:
    """Assigns the rows' groups to ``image_paths`` (absolute paths of every known image).

    Raises:
        DataError: Two rows name the same image with different groups (naming both lines).
    """
    by_path = {_norm(p): Path(p) for p in image_paths}
    by_name: dict[str, list[Path]] = defaultdict(list)
    for path in image_paths:
        by_name[Path(path).name].append(Path(path))
    roots = [Path.cwd(), Path(data_root), Path(csv_path).parent]
    match = GroupMatch(groups={})
    assigned: dict[Path, GroupRow] = {}
    for row in rows:
        image = _find(row.path, roots, by_path, by_name)
        if image is None:
            match.unmatched_rows.append(row)
            if len(by_name.get(Path(row.path).name, [])) > 1:
                match.ambiguous_rows.append(row)
            continue
        earlier = assigned.get(image)
        if earlier is not None and earlier.group != row.group:
            raise DataError(
                f"{csv_path}, lines {earlier.line} and {row.line}: {image} is put in group "
                f"{earlier.group!r} and in group {row.group!r}. Give each image one group.")
        assigned[image] = row
        match.groups[image] = row.group
    return match


def _find(text: str, roots: list[Path], by_path: dict[str, Path],
          by_name: dict[str, list[Path]]) -> Path | None:
    written = Path(text).expanduser()
    candidates = [written] if written.is_absolute() else [root / written for root in roots]
    for candidate in candidates:
        found = by_path.get(_norm(candidate))
        if found is not None:
            return found
    same_name = by_name.get(written.name, [])
    return same_name[0] if len(same_name) == 1 else None


def _norm(path: Path | str) -> str:
    """Comparable form of a path without touching the disk (no symlink resolution)."""
    return os.path.normcase(os.path.abspath(path))
