"""What every verb module shares: the Typer app, the --json/--quiet options, formatting."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from vitkit.console import stderr_console
from vitkit.errors import NothingProcessedError, VitkitError

app = typer.Typer(
    name="vitkit",
    help="From a folder of images to a light, fast and trustworthy vision model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
NumberT = TypeVar("NumberT", int, float)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def plural(count: int, noun: str) -> str:
    """``1 epoch``, ``3 epochs``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def int_list(text: str | None, option: str) -> list[int] | None:
    """``"2,3"`` → ``[2, 3]``; None when the option was not given."""
    return _number_list(text, option, int, "integers such as 2,3")


def float_list(text: str | None, option: str) -> list[float] | None:
    """``"1,2.5"`` → ``[1.0, 2.5]``; None when the option was not given."""
    return _number_list(text, option, float, "numbers such as 1,2,4")


def _number_list(text: str | None, option: str, parse: Callable[[str], NumberT],
                 example: str) -> list[NumberT] | None:
    if text is None:
        return None
    try:
        return [parse(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise VitkitError(f"{option} takes comma-separated {example}; got {text!r}.") from None


def short_path(path: str | Path, width: int) -> str:
    """``path`` relative to the working folder when under it, cut from the left to ``width``
    characters at a separator: the file name, the part that differs, always shows."""
    text = str(path)
    with contextlib.suppress(ValueError):
        text = str(Path(text).relative_to(Path.cwd())) if Path(text).is_absolute() else text
    if len(text) <= width:
        return text
    tail = text[-(width - 1):]
    cut = tail.find(os.sep)
    if 0 <= cut < len(tail) - 1 and len(tail) - cut >= width // 3:
        tail = tail[cut:]
    return "…" + tail


def path_width(other_columns: int) -> int:
    """Characters a path column may take when the rest of a table needs ``other_columns``."""
    return max(24, stderr_console.width - other_columns)


def finish_items(verb: str, done: int, failures: Sequence[tuple[str, str]]) -> None:
    """The exit-code contract of the verbs that process many images (predict, explain,
    anomaly score): nothing processed → a user error (exit 2) that names each failure; some
    failed → a summary line on stderr and exit 0."""
    if done == 0:
        from vitkit.data.files import list_failures

        raise NothingProcessedError(
            f"no image could be {verb} ({list_failures(failures)}). Give image files, "
            "folders of images or globs such as 'shots/*.png'.")
    if failures:
        stderr_console.print(f"[yellow]{done} {verb}, {len(failures)} failed[/] (rows marked "
                             "error; in --json, the items with an \"error\" key)")
    else:
        stderr_console.print(f"{done} {verb}", highlight=False)


def print_per_class(title: str, per_class: dict[str, dict[str, Any]]) -> None:
    """A classification's per-class precision, recall, F1 and support as a table on stderr."""
    from rich.table import Table

    table = Table(title=title)
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label, m in per_class.items():
        table.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
                      str(m["support"]))
    stderr_console.print(table)
