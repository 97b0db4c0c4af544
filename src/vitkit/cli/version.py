"""`vitkit --version` and `vitkit version`: what a bug report needs first.

``vitkit version`` lists vitkit, Python and the platform, torch, torchvision and timm, each
runtime a bundle can run on (onnxruntime, openvino; None when not installed) and whether CUDA
is available, as ``yolo checks`` does. Versions are read from the installed distributions, so
no runtime is imported (openvino alone takes seconds to import).
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Annotated, Any

import typer

from vitkit.cli.common import JsonOpt, app, print_json
from vitkit.console import stderr_console
from vitkit.version import __version__

PACKAGES = ("torch", "torchvision", "timm", "onnxruntime", "openvino")
"""The distributions whose versions `vitkit version` lists, in its order."""


def versions() -> dict[str, Any]:
    """vitkit's, Python's and each package's version (None: not installed), the platform, and
    CUDA: whether torch sees a GPU, its CUDA version and the devices' names."""
    import torch

    found: dict[str, Any] = {"vitkit": __version__, "python": platform.python_version(),
                             "platform": platform.platform()}
    for name in PACKAGES:
        found[name] = _installed(name)
    available = torch.cuda.is_available()
    found["cuda"] = {
        "available": available,
        "version": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if available else [],
    }
    return found


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"vitkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print vitkit's version and exit (`vitkit version`: torch, timm, runtimes, CUDA).",
    )] = False,
) -> None:
    # No docstring: the app's help (common.py) stays the help of `vitkit`.
    del version


@app.command("version")
def version_command(as_json: JsonOpt = False) -> None:
    """Versions of vitkit, Python, torch, torchvision, timm and each runtime, and whether CUDA
    is available: paste them into a bug report.
    """
    found = versions()
    if as_json:
        print_json(found)
        return
    from rich.table import Table

    table = Table(show_header=False, box=None)
    cuda = found["cuda"]
    rows = [(name, value if value is not None else "not installed")
            for name, value in found.items() if name != "cuda"]
    where = f" ({', '.join(cuda['devices'])})" if cuda["devices"] else ""
    rows.append(("cuda", f"available, CUDA {cuda['version']}{where}" if cuda["available"]
                 else f"not available (torch built with CUDA {cuda['version']})"
                 if cuda["version"] else "not available (CPU-only torch)"))
    for name, value in rows:
        table.add_row(name, str(value))
    stderr_console.print(table)
