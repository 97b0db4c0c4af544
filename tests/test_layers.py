"""Imports point down the layers of DESIGN.md: a test that walks the import graph.

Every ``vitkit.X`` import — at module level or inside a function — from package A to package
B must go to a lower layer or the same one, and two packages never import each other.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import vitkit

ROOT = Path(vitkit.__file__).parent

LAYERS: list[set[str]] = [
    {"errors", "atomic", "console", "config", "version"},  # no vitkit imports but these
    {"data", "bundle"},
    {"backbones", "ood"},
    {"predictor"},  # one bundle, any runtime: below everything that predicts
    {"evaluate", "anomaly", "explain", "compress"},
    {"report"},
    {"classify", "bench"},
    {"workflows"},
    {"serve", "cli", "__init__", "__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def import_edges() -> dict[tuple[str, str], list[str]]:
    """(from package, to package) -> the files with such an import."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for file in ROOT.rglob("*.py"):
        package = file.relative_to(ROOT).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(file.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                parts = node.module.split(".")
                if parts[0] == "vitkit":
                    targets = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1] for a in node.names
                           if a.name.startswith("vitkit.")]
            for target in targets:
                if target != package and target != "__version__":
                    edges[(package, target)].append(str(file.relative_to(ROOT)))
    return edges


def test_every_package_has_a_layer() -> None:
    packages = {p.name.removesuffix(".py") for p in ROOT.iterdir()
                if (p.suffix == ".py" or (p.is_dir() and any(p.glob("*.py"))))}
    assert packages - {"py"} <= set(LAYER), sorted(packages - set(LAYER))


def test_no_import_points_up_a_layer() -> None:
    upward = [f"{a} (layer {LAYER[a]}) imports {b} (layer {LAYER[b]}) in {files[0]}"
              for (a, b), files in import_edges().items() if LAYER[b] > LAYER[a]]
    assert not upward, "\n".join(upward)


def test_no_two_packages_import_each_other() -> None:
    edges = import_edges()
    circles = sorted({tuple(sorted((a, b))) for (a, b) in edges if (b, a) in edges})
    assert not circles, circles
