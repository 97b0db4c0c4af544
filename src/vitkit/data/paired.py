"""Image + audio manifests: a CSV with ``image,audio,label[,split]``, one example per row.

Paths are relative to the CSV's folder; either path may be empty (that input is missing for
the row), never both. A file that cannot be read is not an error here: validation
(:func:`validate_paired`) skips its row and reports it, as for images.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vitkit.data.audio import AudioProblem, load_wav
from vitkit.data.images import DEFAULT_MAX_PIXELS, ImageProblem, load_rgb, reason_kind
from vitkit.data.manifest import parse_split
from vitkit.data.validate import SkippedImage
from vitkit.errors import DataError

MODALITIES = ("image", "audio")
_COLUMNS = ("image", "audio", "label", "split")
_EXAMPLE = ("image,audio,label,split\nimages/7a.png,audio/7_theo_0.wav,7,train\n"
            "images/3b.png,,3,val\n,audio/5_theo_4.wav,5,val")


@dataclass(frozen=True)
class PairedRow:
    """One manifest row, paths made absolute; None for an empty cell.

    Attributes:
        line: The row's line in the CSV (1-based, the header is line 1), for messages.
    """

    image: Path | None
    audio: Path | None
    label: str | None
    split: str | None = None
    line: int = 0

    def path(self, modality: str) -> Path | None:
        return self.image if modality == "image" else self.audio

    @property
    def name(self) -> str:
        """How a message names the row: its files, ``image + audio``."""
        return " + ".join(str(p) for p in (self.image, self.audio) if p is not None)


def is_paired_manifest(data: str | Path) -> bool:
    """True for a CSV file whose header has an ``audio`` column (the image + audio task);
    a classification manifest (``path,label[,split]``) has none."""
    path = Path(data)
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return "audio" in {cell.strip().lower() for cell in header}


def read_paired_manifest(csv_path: Path, need_labels: bool = True) -> list[PairedRow]:
    """Reads an ``image,audio,label[,split]`` manifest.

    Args:
        csv_path: The CSV file.
        need_labels: Training and evaluation need a label on every row; prediction does
            not (the ``label`` column may then be absent or empty).

    Raises:
        DataError: The file cannot be read, the header lacks ``image`` or ``audio`` (or
            ``label``), names an unknown column, a row has neither file, lacks its label,
            or names an unknown split.
    """
    csv_path = Path(csv_path)
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read the manifest {csv_path}: {exc}. Save it as a UTF-8 CSV "
                        f"file with the header image,audio,label[,split], for example:\n"
                        f"{_EXAMPLE}") from exc
    # (line as an editor shows it, cells): blank lines are counted, not kept
    numbered = [(line, row) for line, row in enumerate(rows, start=1)
                if any(cell.strip() for cell in row)]
    if not numbered:
        raise DataError(f"the manifest {csv_path} is empty. Add a header and one row per "
                        f"example:\n{_EXAMPLE}")
    columns = _parse_header(numbered[0][1], csv_path, need_labels)
    base = csv_path.parent
    out = []
    for line, row in numbered[1:]:
        cells = {name: (row[i].strip() if i < len(row) else "") for name, i in columns.items()}
        if len(row) > len(columns) and any(cell.strip() for cell in row[len(columns):]):
            raise DataError(f"{csv_path}, line {line}: {len(row)} cells for {len(columns)} "
                            f"columns ({row!r}). Quote a path that holds a comma, or remove "
                            "the extra cells.")
        if not cells["image"] and not cells["audio"]:
            raise DataError(f"{csv_path}, line {line}: the row has neither an image nor an "
                            "audio file. Give one or both, or delete the row.")
        label = cells.get("label") or None
        if need_labels and label is None:
            raise DataError(f"{csv_path}, line {line}: the row has no label. Fill it in "
                            "(the class name) or delete the row.")
        out.append(PairedRow(
            image=_absolute(base, cells["image"]), audio=_absolute(base, cells["audio"]),
            label=label, split=parse_split(cells.get("split", ""), csv_path, line),
            line=line))
    if not out:
        raise DataError(f"the manifest {csv_path} has a header but no rows. Add one row per "
                        f"example:\n{_EXAMPLE}")
    return out


def _absolute(base: Path, cell: str) -> Path | None:
    return Path(os.path.abspath(base / Path(cell).expanduser())) if cell else None


def _parse_header(header: list[str], csv_path: Path, need_labels: bool) -> dict[str, int]:
    names = [cell.strip().lower() for cell in header]
    required = ("image", "audio", "label") if need_labels else ("image", "audio")
    missing = [name for name in required if name not in names]
    unknown = [name for name in names if name not in _COLUMNS]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if missing or unknown or repeated:
        problems = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + (
            [f"unknown column(s) {', '.join(repr(n) for n in unknown)}"] if unknown else []) + (
            [f"repeated column(s) {', '.join(repeated)}"] if repeated else [])
        raise DataError(f"the manifest {csv_path} has a bad header {','.join(header)!r}: "
                        f"{'; '.join(problems)}. The first line must be image,audio,label or "
                        f"image,audio,label,split (leave a cell empty when a row has no image "
                        f"or no audio), for example:\n{_EXAMPLE}")
    return {name: names.index(name) for name in names}


@dataclass
class PairedReport:
    """The outcome of :func:`validate_paired`: usable rows in input order, and the files
    that made a row unusable (``reason`` starts with the modality: ``audio: not a WAV
    file``)."""

    usable: list[PairedRow]
    skipped: list[SkippedImage]

    def summary(self) -> str:
        n = len(self.usable)
        line = f"{n} usable row{'' if n == 1 else 's'}, {len(self.skipped)} skipped"
        if self.skipped:
            kinds = Counter(reason_kind(s.reason) for s in self.skipped)
            line += " (" + ", ".join(f"{c} {k}" for k, c in kinds.most_common()) + ")"
        return line


def validate_paired(rows: Sequence[PairedRow], modalities: Sequence[str] = MODALITIES,
                    max_pixels: int = DEFAULT_MAX_PIXELS, max_seconds: float | None = None,
                    workers: int = 2, step: Callable[[], None] | None = None) -> PairedReport:
    """Opens every file of the ``modalities`` asked for; a row with an unusable file is
    skipped as a whole and reported (its other input alone would not be the example the
    manifest describes). Files of other modalities are not opened."""
    def check(row: PairedRow) -> SkippedImage | None:
        for modality in modalities:
            path = row.path(modality)
            if path is None:
                continue
            try:
                if modality == "image":
                    load_rgb(path, max_pixels)
                else:
                    load_wav(path, max_seconds)
            except (ImageProblem, AudioProblem) as problem:
                return SkippedImage(path, f"{modality}: {problem.reason}", row.label, row.split)
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        outcomes = []
        for outcome in pool.map(check, rows):
            outcomes.append(outcome)
            if step is not None:
                step()
    usable = [row for row, problem in zip(rows, outcomes, strict=True) if problem is None]
    return PairedReport(usable, [p for p in outcomes if p is not None])
