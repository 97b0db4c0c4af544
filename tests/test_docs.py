"""The two doors stay open: a short README whose links resolve, and a CLI reference that covers
every verb. (`make docs` builds the whole site strictly; these checks run in seconds.)"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(markdown: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown.read_text(), flags=re.S)  # code is not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]


def test_readme_is_short() -> None:
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 250, f"README.md has {lines} lines; move detail into docs/ (at most 250)"


def test_every_relative_link_resolves() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = [f"{page.relative_to(ROOT)} -> {target}" for page in pages
              for target in relative_links(page)
              if not (page.parent / target.split("#")[0]).exists()]
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_cli_reference_covers_every_command() -> None:
    spec = importlib.util.spec_from_file_location("cli_reference",
                                                  ROOT / "docs/hooks/cli_reference.py")
    assert spec and spec.loader
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    root = hook.root_command()
    paths = [ctx.command_path for _, ctx in hook.walk(root, root.context_class(root,
                                                                             info_name="vitkit"))]
    assert {"vitkit train", "vitkit anomaly fit", "vitkit serve run"} <= set(paths)
    page = hook.on_page_markdown(f"# CLI\n\n{hook.MARKER}\n", None, None, None)
    missing = [p for p in paths if f"`{p}`" not in page]
    assert not missing, missing
    for cmd, ctx in hook.walk(root, root.context_class(root, info_name="vitkit")):
        for param in cmd.params:
            if param.param_type_name == "option" and not param.hidden:
                assert param.opts[0] in page, f"{ctx.command_path} {param.opts[0]}"


def test_the_design_page_shows_the_layers_the_layer_test_holds() -> None:
    from tests.test_layers import FACADE, LAYERS

    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", (ROOT / "docs/design.md").read_text(), re.M)
    documented = {int(n): set(re.findall(r"`([a-z_]+)`", names)) for n, names in rows}
    expected = {i: {n for n in names if n not in (FACADE, "__main__")}
                for i, names in enumerate(LAYERS)}
    assert documented == expected, "docs/design.md's layer table differs from tests/test_layers.py"
