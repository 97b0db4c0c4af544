"""mkdocs hook: the CLI reference, written at every build from the Typer app itself.

A page holding the marker ``<!-- vitkit-cli-reference -->`` gets, in its place, one section per
verb — usage, help, arguments and options with their defaults — read from the click command tree
that ``vitkit`` runs (``typer.main.get_command(app)``). Nothing is copied by hand, so a new
option shows up in the docs with the next build, and a removed one disappears.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

MARKER = "<!-- vitkit-cli-reference -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """mkdocs calls this for every page; only the one with the marker changes."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())


def root_command() -> Any:
    """The click command behind ``vitkit``: the CLI's own (reflowed help) when it has one."""
    import typer

    import vitkit.cli as cli

    build = getattr(cli, "command", None)
    return build() if callable(build) else typer.main.get_command(cli.app)


def walk(cmd: Any, ctx: Any) -> Iterator[tuple[Any, Any]]:
    """Every command, depth first, in the order ``--help`` lists them."""
    yield cmd, ctx
    for name in _subcommands(cmd, ctx):
        sub = cmd.get_command(ctx, name)
        yield from walk(sub, type(ctx)(sub, info_name=name, parent=ctx))


def _subcommands(cmd: Any, ctx: Any) -> list[str]:
    """Visible subcommand names (typer may run on its own vendored click, so no isinstance)."""
    if not hasattr(cmd, "list_commands"):
        return []
    return [n for n in cmd.list_commands(ctx)
            if (sub := cmd.get_command(ctx, n)) is not None and not sub.hidden]


def render() -> str:
    root = root_command()
    top = root.context_class(root, info_name="vitkit")
    sections = []
    for cmd, ctx in walk(root, top):
        sections.append(section(cmd, ctx))
    return "\n\n".join(sections) + "\n"


def section(cmd: Any, ctx: Any) -> str:
    path = ctx.command_path
    depth = path.count(" ")
    heading = "#" * min(1 + depth, 4) + f" `{path}`" if depth else "## `vitkit`"
    lines = [heading, "", "```", usage(cmd, ctx), "```", ""]
    if cmd.help:
        lines += [_text(inspect.cleandoc(cmd.help)), ""]
    names = _subcommands(cmd, ctx)
    if names:
        lines += ["| command | what it does |", "|---|---|"]
        lines += [f"| [`{n}`](#{_anchor(f'{path} {n}')}) | "
                  f"{_cell(cmd.get_command(ctx, n).get_short_help_str(90))} |" for n in names]
        lines.append("")
    params = [p for p in cmd.params if not getattr(p, "hidden", False)]
    if params:
        lines += ["| argument / option | help and default |", "|---|---|"]
        for param in params:
            record = param.get_help_record(ctx)
            if record is None:  # click gives arguments no help record
                record = (param.name.upper(), getattr(param, "help", None) or "")
            lines.append(f"| `{_code(record[0])}` | {_cell(record[1])} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def usage(cmd: Any, ctx: Any) -> str:
    """The usage line, built from the parameters (typer's own pieces vary between versions)."""
    pieces = [ctx.command_path]
    if any(p.param_type_name == "option" for p in cmd.params):
        pieces.append("[OPTIONS]")
    for param in cmd.params:
        if param.param_type_name != "argument":
            continue
        name = param.name.upper() + ("..." if param.nargs == -1 else "")
        pieces.append(name if param.required else f"[{name}]")
    if _subcommands(cmd, ctx):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _anchor(path: str) -> str:
    """The id mkdocs' toc extension gives the heading `` `path` ``."""
    return "-".join(path.lower().split())


def _text(text: str) -> str:
    """Help text as Markdown: angle brackets shown, not read as HTML."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    """A code span inside a table cell: shown as written, the cell's pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _cell(text: str) -> str:
    return _text(" ".join(text.split())).replace("|", "\\|")
