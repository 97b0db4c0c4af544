"""What the mask and box layers share: class names from a file, checking every item once in
threads with a progress bar, reason counts, and seeded splits.

Segmentation (:mod:`vitkit.data.masks`) and detection (:mod:`vitkit.data.boxes`) both pair an
image with an annotation; both report an unusable pair the way classification reports an
unusable image (:class:`~vitkit.data.validate.SkippedImage`, ``path,reason`` rows).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vitkit.bundle import describe_validation_error
from vitkit.data.images import reason_kind
from vitkit.data.layouts import Sample, assign_splits
from vitkit.errors import DataError

T = TypeVar("T")
R = TypeVar("R")

NAMES_FILES = ("data.yaml", "data.yml", "classes.txt")
"""Files that name the classes, looked for in this order in the data folder."""


class ClassNames(BaseModel):
    """The ``names`` of an Ultralytics-style ``data.yaml``: a list, or a dict keyed 0..n-1.

    Other keys (``path``, ``train``, ``nc``, ``download`` …) are allowed; ``nc`` must agree.
    """

    model_config = ConfigDict(extra="allow")
    names: list[str] | dict[int, str]
    nc: int | None = None

    @field_validator("names")
    @classmethod
    def _contiguous(cls, names: list[str] | dict[int, str]) -> list[str] | dict[int, str]:
        if isinstance(names, dict) and sorted(names) != list(range(len(names))):
            raise ValueError(f"the keys must be 0..{len(names) - 1} without gaps, got "
                             f"{sorted(names)}")
        values = list(names.values()) if isinstance(names, dict) else names
        if not values:
            raise ValueError("no class names")
        if any(not name.strip() for name in values):
            raise ValueError("a class name is blank")
        repeated = sorted({name for name in values if values.count(name) > 1})
        if repeated:
            raise ValueError(f"repeated class name(s) {', '.join(map(repr, repeated))}")
        return names

    @model_validator(mode="after")
    def _count_matches(self) -> ClassNames:
        if self.nc is not None and self.nc != len(self.names):
            raise ValueError(f"nc is {self.nc} but names lists {len(self.names)} classes")
        return self

    def as_list(self) -> list[str]:
        if isinstance(self.names, dict):
            return [self.names[i] for i in range(len(self.names))]
        return list(self.names)


def read_class_names(folder: Path) -> tuple[list[str], Path] | None:
    """The class names from ``data.yaml`` / ``data.yml`` (``names:``) or ``classes.txt`` (one
    per line) in ``folder``, with the file they came from; ``None`` when there is no such file.

    Raises:
        DataError: The file exists but cannot be read or does not name the classes properly.
    """
    for name in NAMES_FILES:
        path = folder / name
        if path.is_file():
            return (_read_txt(path) if path.suffix == ".txt" else _read_yaml(path)), path
    return None


def _read_yaml(path: Path) -> list[str]:
    example = "names: [background, scratch, dent]   (or names: {0: background, 1: scratch})"
    try:
        content: Any = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read {path}: {str(exc).splitlines()[0]}. Save it as UTF-8 YAML "
                        f"with the class names, e.g. {example}.") from exc
    if not isinstance(content, dict):
        raise DataError(f"{path} holds {type(content).__name__}, not a mapping. Give the class "
                        f"names as {example}.")
    try:
        return ClassNames.model_validate(content).as_list()
    except ValidationError as exc:
        raise DataError(f"{path} does not name the classes: {describe_validation_error(exc)}. "
                        f"Write them as {example}.") from exc


def _read_txt(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}. Save it as UTF-8 text, one class name "
                        "per line.") from exc
    try:
        return ClassNames(names=[line.strip() for line in lines if line.strip()]).as_list()
    except ValidationError as exc:
        raise DataError(f"{path} does not name the classes: {describe_validation_error(exc)}. "
                        "Write one class name per line, in class-index order.") from exc


def check_all(items: Sequence[T], check: Callable[[T], R], workers: int = 2,
              progress: bool = True, what: str = "Checking images") -> list[R]:
    """``[check(item) for item in items]`` in ``workers`` threads (decoding releases the GIL),
    in input order, with a progress bar on stderr. ``check`` reports problems in its result;
    an exception it raises is a bug and stops the whole run."""
    results: list[R | None] = [None] * len(items)
    with ThreadPoolExecutor(max(1, workers)) as pool, _progress(progress, len(items), what) as step:
        futures: dict[Future[R], int] = {pool.submit(check, item): i
                                         for i, item in enumerate(items)}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                step()
        except BaseException:
            for future in futures:  # do not decode the rest after a crash or Ctrl-C
                future.cancel()
            raise
    return results  # type: ignore[return-value]  # every slot was filled above


@contextmanager
def _progress(enabled: bool, total: int, what: str) -> Iterator[Callable[[], None]]:
    if not enabled or total == 0:
        yield lambda: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)


def reason_counts(reasons: Iterable[str]) -> str:
    """E.g. ``"2 outside the image, 1 unknown class"``: reason kinds, most frequent first."""
    kinds = Counter(reason_kind(reason) for reason in reasons)
    ordered = sorted(kinds.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{count} {kind}" for kind, count in ordered)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def group_splits(keys: Sequence[tuple[Path, str, str | None]], val_fraction: float,
                 test_fraction: float, seed: int) -> list[str]:
    """Splits for ``(image, group, split)`` keys: those with a split keep it, the others are
    shared out per group (an MVTec defect type, say) by :func:`~vitkit.data.layouts.assign_splits`,
    seeded and stratified, so a pair or an image gets the same split in every run."""
    samples = [Sample(path, group, split) for path, group, split in keys]
    return [s.split or "train" for s in assign_splits(samples, val_fraction, test_fraction, seed)]
