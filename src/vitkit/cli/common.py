"""What every verb module shares: the Typer app, the --json/--quiet options, formatting."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from vitkit.errors import VitkitError

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
