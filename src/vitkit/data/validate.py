"""Opening every image once before training, to skip the unusable ones and report why."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vitkit.atomic import write_csv_atomic
from vitkit.data.images import DEFAULT_MAX_PIXELS, ImageProblem, reason_kind
from vitkit.data.intensity import IntensitySpec, load_image
from vitkit.data.layouts import Sample
from vitkit.errors import DataError


@dataclass(frozen=True)
class SkippedImage:
    """An image left out of training, and why.

    Attributes:
        path: The file.
        reason: Short human-readable reason (see :mod:`vitkit.data.images`).
        label: Its class, when known; lets :func:`check_usable` name classes whose every image
            was skipped.
        split: Its split, when known.
    """

    path: Path
    reason: str
    label: str | None = None
    split: str | None = None


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_samples`.

    Attributes:
        usable: Samples that decoded fine, in input order.
        skipped: Samples that cannot be used, in input order.
        conversions: Conversion kind -> number of images it was applied to.
        converted_images: Number of usable images with at least one conversion.
    """

    usable: list[Sample]
    skipped: list[SkippedImage]
    conversions: dict[str, int]
    converted_images: int = field(default=0)

    def summary(self) -> str:
        """One line, e.g. ``"398 usable images, 5 skipped (2 not an image, ...), 3 converted"``."""
        n = len(self.usable)
        line = f"{n} usable image{'' if n == 1 else 's'}, {len(self.skipped)} skipped"
        if self.skipped:
            line += f" ({_reason_counts(self.skipped)})"
        return f"{line}, {self.converted_images} converted"


def _reason_counts(skipped: list[SkippedImage]) -> str:
    """E.g. ``"2 truncated or corrupt, 1 not an image"``, most frequent first."""
    kinds = Counter(reason_kind(s.reason) for s in skipped)
    ordered = sorted(kinds.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{count} {kind}" for kind, count in ordered)


def validate_samples(samples: list[Sample], max_pixels: int = DEFAULT_MAX_PIXELS,
                     progress: bool = True, workers: int = 2,
                     intensity: IntensitySpec | None = None) -> ValidationReport:
    """Fully decodes every image and sorts the samples into usable and skipped.

    Args:
        samples: The samples to check.
        max_pixels: Largest accepted width * height (see :func:`~vitkit.data.images.load_rgb`).
        progress: Show a progress bar on stderr.
        workers: Number of threads decoding images.
        intensity: Read the images through this spec (DICOM included), as the model will.

    Returns:
        The report; ``usable`` and ``skipped`` keep the input order.
    """
    outcomes: list[list[str] | ImageProblem] = [[] for _ in samples]

    def check(sample: Sample) -> list[str] | ImageProblem:
        try:
            return load_image(sample.path, max_pixels, intensity)[1]
        except ImageProblem as problem:
            return problem

    with ThreadPoolExecutor(max(1, workers)) as pool, _progress(progress, len(samples)) as step:
        futures: dict[Future[list[str] | ImageProblem], int] = {
            pool.submit(check, sample): i for i, sample in enumerate(samples)
        }
        try:
            for future in as_completed(futures):
                outcomes[futures[future]] = future.result()
                step()
        except BaseException:
            for future in futures:  # do not decode the rest after a crash or Ctrl-C
                future.cancel()
            raise

    usable: list[Sample] = []
    skipped: list[SkippedImage] = []
    conversions: Counter[str] = Counter()
    converted = 0
    for sample, outcome in zip(samples, outcomes, strict=True):
        if isinstance(outcome, ImageProblem):
            skipped.append(SkippedImage(sample.path, outcome.reason, sample.label, sample.split))
            continue
        usable.append(sample)
        conversions.update(outcome)
        converted += bool(outcome)
    return ValidationReport(usable, skipped, dict(sorted(conversions.items())), converted)


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    if not enabled or total == 0:
        yield lambda: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("Checking images", total=total)
        yield lambda: bar.advance(task)


def write_skipped_csv(skipped: list[SkippedImage], path: Path) -> None:
    """Writes ``path,reason`` rows, atomically: readers see the old file or the complete new one.

    Args:
        skipped: The skipped images.
        path: Destination CSV; its folder is created if needed.
    """
    write_csv_atomic(path, ["path", "reason"], ([str(s.path), s.reason] for s in skipped))


def check_usable(report: ValidationReport,
                 require_splits: tuple[str, ...] = ("train", "val")) -> None:
    """Raises if the usable images cannot train and validate a classifier.

    Args:
        report: What :func:`validate_samples` returned; samples must have splits assigned when
            ``require_splits`` is not empty.
        require_splits: Splits in which every class needs at least one usable image.

    Raises:
        DataError: No usable image, fewer than two classes, or a class without a usable image
            in a required split.
        ValueError: A usable sample has no split while splits are required (a caller bug:
            assign splits first, e.g. with ``ensure_validation_split``).
    """
    if not report.usable:
        if report.skipped:
            examples = "; ".join(f"{s.path}: {s.reason}" for s in report.skipped[:3])
            raise DataError(f"no usable images: all {len(report.skipped)} files were skipped "
                            f"({_reason_counts(report.skipped)}), e.g. {examples}. Replace "
                            "them with readable JPEG/PNG images.")
        raise DataError("no images found. Put images in DATA/<class>/ (one folder per class), "
                        "or list them in a CSV manifest with the header path,label[,split].")
    usable_classes = sorted({s.label for s in report.usable})
    all_classes = sorted(set(usable_classes) | {s.label for s in report.skipped if s.label})
    if len(usable_classes) < 2:
        lost = [c for c in all_classes if c not in usable_classes]
        detail = f" (every image of {', '.join(map(repr, lost))} was skipped)" if lost else ""
        raise DataError(f"a classifier needs at least two classes; found only "
                        f"{usable_classes[0]!r}{detail}. Put each class's images in its own "
                        "folder, DATA/<class>/, with at least two class folders.")
    if require_splits and any(s.split is None for s in report.usable):
        raise ValueError("check_usable needs samples with splits; call ensure_validation_split "
                         "or assign_splits first")
    present = {(s.split, s.label) for s in report.usable}
    missing = [(split, label) for split in require_splits for label in all_classes
               if (split, label) not in present]
    if missing:
        skipped = Counter((s.split, s.label) for s in report.skipped)
        listed = "; ".join(
            f"class {label!r} in split {split!r}"
            + (f" ({skipped[(split, label)]} skipped)" if skipped[(split, label)] else "")
            for split, label in missing
        )
        raise DataError(
            f"some classes have no usable image in a required split: {listed}. Add usable images "
            "of each class to each split (DATA/<split>/<class>/ or the manifest's split column); "
            "with a folder per class and no split folders, give each class at least 2 usable "
            "images so one can be held out for validation."
        )
