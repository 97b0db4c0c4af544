"""Imports point down the layers: a test that walks the import graph of ``src/vitkit``.

Every ``vitkit.X`` import — at module level, inside a function or under ``TYPE_CHECKING`` —
from package A to package B must go to a lower layer or the same one, and:

- no module inside the package imports the package facade (``import vitkit``,
  ``from vitkit import …``): ``vitkit/__init__.py`` re-exports from every layer, so importing
  it from below is an arrow up (the version lives in the leaf ``vitkit.version``);
- no relative imports (``from . import x``): every arrow is spelled ``vitkit.X``, so this test
  and a reader see it;
- no cycles: not between packages (which the layers allow only inside one layer), nor between
  the modules of one package;
- every package and top-level module has a layer; one that has none, or an import of a
  ``vitkit.X`` that does not exist, fails with a message that says what to do.

``LAYERS`` below is the one statement of the layers; the docs' Design page quotes it between
the snippet markers.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import vitkit

ROOT = Path(vitkit.__file__).parent

# --8<-- [start:layers]
LAYERS: list[set[str]] = [  # lowest first; a package may import its own layer and those below
    {"errors", "atomic", "console", "config", "version"},  # leaves: no vitkit imports but these
    {"data", "bundle"},  # files in: image folders, layouts, transforms; the bundle's files
    {"backbones", "ood"},  # timm / Hugging Face / local weights; OOD scores (pure math + fit)
    {"predictor"},  # one bundle, any runtime: below everything that predicts
    {"evaluate", "anomaly", "explain", "compress", "segment", "detect",  # metrics; task models
     "fusion"},
    {"report"},  # HTML pages and PNG plots
    {"classify", "benchmark", "tasks"},  # training engines; `vitkit bench`; the task plug-ins
    {"workflows"},  # end-to-end jobs behind the verbs: the only layer that ties the others
    {"serve", "cli", "__init__", "__main__"},  # the doors: HTTP, the command line, the facade
]
# --8<-- [end:layers]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
FACADE = "__init__"

@dataclass(frozen=True)
class Import:
    """One import statement inside the package."""

    file: str  # relative to src/vitkit, e.g. "anomaly/detector.py"
    line: int
    source: str  # the importing module, e.g. "vitkit.anomaly.detector"
    target: str  # the imported module, e.g. "vitkit.anomaly.maps" (or "vitkit" itself)

    def where(self) -> str:
        return f"vitkit/{self.file}:{self.line}"


def module_name(file: Path) -> str:
    """``ROOT/anomaly/maps.py`` -> ``vitkit.anomaly.maps``; ``ROOT/__init__.py`` -> ``vitkit``."""
    parts = ("vitkit", *file.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """``vitkit.anomaly.maps`` -> ``anomaly``; ``vitkit`` -> ``__init__`` (the facade)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else FACADE


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split(".")[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports() -> list[Import]:
    """Every import of ``vitkit`` or ``vitkit.…`` in the package, and every relative import
    (its target is what it resolves to)."""
    found: list[Import] = []
    for file in sorted(ROOT.rglob("*.py")):
        source = module_name(file)
        relative = str(file.relative_to(ROOT))
        package_path = source if file.name == "__init__.py" else source.rpartition(".")[0]
        for node in ast.walk(ast.parse(file.read_text(), filename=str(file))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "vitkit" or alias.name.startswith("vitkit."):
                        found.append(Import(relative, node.lineno, source, alias.name))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package_path.split(".")[:len(package_path.split("."))
                                                           - node.level + 1])
                    module = f"{base}.{node.module}" if node.module else base
                elif node.module and (node.module == "vitkit"
                                      or node.module.startswith("vitkit.")):
                    module = node.module
                else:
                    continue
                for alias in node.names:  # `from vitkit.anomaly import maps`: the module maps
                    candidate = f"{module}.{alias.name}"
                    target = candidate if module != "vitkit" and is_module(candidate) else module
                    found.append(Import(relative, node.lineno, source, target))
    return found


def relative_imports() -> list[str]:
    found = []
    for file in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                dots = "." * node.level
                found.append(f"vitkit/{file.relative_to(ROOT)}:{node.lineno}: "
                             f"from {dots}{node.module or ''} import …")
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each as one
    cycle through its nodes: every circle of the graph shows up in one of them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(_cycle_through(sorted(component), edges))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def _cycle_through(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first node back to itself (breadth first)."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges.get(node, set()) & members):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    return component


def describe(cycle: list[str], evidence: dict[tuple[str, str], Import]) -> str:
    steps = [f"{a} -> {b} ({evidence[(a, b)].where()})" for a, b in pairwise(cycle)]
    return "a circle: " + "; ".join(steps)


# ---------------------------------------------------------------------------------- tests

def test_every_package_has_a_layer() -> None:
    packages = {p.name.removesuffix(".py") for p in ROOT.iterdir()
                if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").is_file())}
    missing = sorted(packages - set(LAYER))
    assert not missing, (
        f"no layer for {', '.join(f'vitkit.{m}' for m in missing)}: add each to the set of "
        "LAYERS in tests/test_layers.py it belongs to (the lowest layer whose packages it "
        "imports, no lower) and to the layers on the docs' Design page")


def test_every_import_names_a_module_that_exists() -> None:
    unknown = [f"{i.where()} imports {i.target}, which is not a module of vitkit"
               for i in imports() if not is_module(i.target)]
    assert not unknown, "\n".join(unknown)


def test_no_import_points_up_a_layer() -> None:
    upward, unplaced = [], set()
    for i in imports():
        source, target = package_of(i.source), package_of(i.target)
        if source == target or target == FACADE or not is_module(i.target):
            continue  # the facade and unknown modules have tests of their own
        if source not in LAYER or target not in LAYER:
            unplaced |= {p for p in (source, target) if p not in LAYER}
            continue
        if LAYER[target] > LAYER[source]:
            upward.append(f"{source} (layer {LAYER[source]}) imports {target} (layer "
                          f"{LAYER[target]}) at {i.where()}")
    assert not unplaced, (f"packages with no layer: {sorted(unplaced)}; add them to LAYERS "
                          "in tests/test_layers.py")
    assert not upward, ("imports that point up a layer (move the thing down, never import "
                        "up):\n" + "\n".join(upward))


def test_no_module_imports_the_package_facade() -> None:
    """``vitkit/__init__.py`` re-exports from the top layers; a module below that imports it
    imports every layer above itself. Read the version from ``vitkit.version``."""
    found = [i for i in imports() if i.target == "vitkit" and i.source != "vitkit"]
    facade = [f"{i.where()}: imports vitkit itself (from vitkit import …); import the module "
              "that defines the name instead (e.g. vitkit.version for __version__)"
              for i in found]
    assert not facade, "\n".join(facade)


def test_no_relative_imports() -> None:
    found = relative_imports()
    assert not found, ("relative imports hide the arrows between packages; spell them "
                       "`from vitkit.X import …`:\n" + "\n".join(found))


def test_no_circle_between_packages() -> None:
    """Packages in one layer may import each other's modules, but never round a circle
    (which would make them one package in two folders)."""
    edges: dict[str, set[str]] = defaultdict(set)
    evidence: dict[tuple[str, str], Import] = {}
    for i in imports():
        source, target = package_of(i.source), package_of(i.target)
        if source != target and target != FACADE:
            edges[source].add(target)
            evidence.setdefault((source, target), i)
    found = [describe(cycle, evidence) for cycle in cycles(edges)]
    assert not found, "\n".join(found)


def test_no_circle_between_the_modules_of_a_package() -> None:
    """Inside a package too, imports form no circle — not even one closed only by an import
    under TYPE_CHECKING or inside a function: a circle means two modules that cannot be read,
    tested or changed apart. Move what both need into a third module."""
    edges: dict[str, set[str]] = defaultdict(set)
    evidence: dict[tuple[str, str], Import] = {}
    for i in imports():
        # A package's __init__ re-exports its modules: an import of the package is an
        # import of its __init__, which is what the edge records.
        if i.source != i.target and package_of(i.source) == package_of(i.target) \
                and not i.target.startswith(i.source + "."):
            edges[i.source].add(i.target)
            evidence.setdefault((i.source, i.target), i)
    found = [describe(cycle, evidence) for cycle in cycles(edges)]
    assert not found, "\n".join(found)
