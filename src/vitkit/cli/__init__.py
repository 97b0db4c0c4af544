"""The `vitkit` command: each verb is a thin call into the library.

Conventions: `--json` prints one JSON document on stdout; people get tables and progress bars on
stderr. Exit codes: 0 ok, 2 user error (a one-paragraph message, no traceback), 1 internal error.

The verbs live in one module per area (classify, compress, trust, anomaly, serve, version);
importing them registers them on ``app`` in the order `vitkit --help` lists them.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Iterator
from typing import Any

import typer

from vitkit.cli.common import app
from vitkit.console import stderr_console
from vitkit.errors import VitkitError

__all__ = ["app", "main"]

for _verbs in ("classify", "compress", "trust", "anomaly", "segment", "detect",  # --help order
               "serve", "version"):
    importlib.import_module(f"vitkit.cli.{_verbs}")


def command() -> Any:
    """The click command behind ``app``, with help that reads well at 80 columns: options whose
    help already says "(default: …)" don't repeat it as "[default: …]", and flags show no
    "<bool>" type."""
    root = typer.main.get_command(app)
    for cmd in _walk(root):
        if cmd.help:
            cmd.help = _reflow(cmd.help)
        cmd.get_help_option = _flag_without_type(cmd.get_help_option)
        for param in cmd.params:
            if getattr(param, "param_type_name", "") != "option":
                continue
            if param.help and "(default:" in param.help:
                param.show_default = False
            if getattr(param, "is_flag", False):
                param.metavar = ""
    return root


def _reflow(text: str) -> str:
    """Docstring paragraphs as single lines: rich keeps the source's line breaks, which land
    mid-sentence on any terminal."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _flag_without_type(get_help_option: Any) -> Any:
    def patched(ctx: Any) -> Any:
        option = get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option
    return patched


def _walk(cmd: Any) -> Iterator[Any]:
    yield cmd
    for sub in getattr(cmd, "commands", {}).values():
        yield from _walk(sub)


def main() -> None:
    """Entry point: user errors exit 2 with a message, never a traceback."""
    try:
        command()(prog_name="vitkit", standalone_mode=False)
    except VitkitError as exc:
        stderr_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        stderr_console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - click usage errors carry their own exit code
        usage_errors, aborts = _click_exception_types()
        if isinstance(exc, usage_errors):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if isinstance(exc, aborts):
            sys.exit(1)
        raise


def _click_exception_types() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """Usage-error and abort classes of click and of typer's vendored copy of click.

    Recent typer releases ship click as ``typer._click`` and no longer install click itself,
    so checking only ``click.exceptions`` turned every usage error into a traceback.
    """
    usage: list[type[Exception]] = []
    aborts: list[type[Exception]] = []
    try:
        import click
    except ImportError:
        pass
    else:
        usage.append(click.exceptions.ClickException)
        aborts.append(click.exceptions.Abort)
    try:
        from typer._click.exceptions import ClickException as VendoredClickException
    except ImportError:
        pass
    else:
        usage.append(VendoredClickException)
    aborts.append(typer.Abort)
    return tuple(usage), tuple(aborts)
