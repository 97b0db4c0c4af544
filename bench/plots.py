"""Plots for the docs' Benchmarks pages, from a bench run or from the figures recorded there.

    .venv/bin/python bench/plots.py recorded [--out docs/benchmarks/img]

``recorded`` redraws every plot of the docs from the figures as they were measured (the tables
below, copied from the Benchmarks pages with their dates); the bench scripts call the same
functions with a new run's rows (``bench/anomaly_few_shot.py --plot``, ``bench/speed_goal.py
--plot``), so a re-run gives the same picture of today's machine.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or a server
import matplotlib.pyplot as plt  # noqa: E402


def few_shot(rows: Iterable[Mapping[str, Any]], path: Path | str) -> Path:
    """Image AUROC and false alarms against the number of normal images, one line per set and
    copies; rows as ``bench/anomaly_few_shot.py`` emits them (seeds averaged)."""
    groups: dict[tuple[str, str], dict[int, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list))
    for row in rows:
        groups[(row["set"], row["augment"])][int(row["shots"])].append(
            (float(row["image_auroc"]), float(row["false_alarms"])))
    fig, (auroc, alarms) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for (name, augment), by_shots in sorted(groups.items()):
        shots = sorted(by_shots)
        mean = [tuple(sum(v) / len(v) for v in zip(*by_shots[s], strict=True)) for s in shots]
        style = "-" if augment == "none" else "--"
        label = f"{name}, {'no copies' if augment == 'none' else augment}"
        auroc.plot(shots, [m[0] for m in mean], style, marker="o", label=label)
        alarms.plot(shots, [100 * m[1] for m in mean], style, marker="o", label=label)
    for ax, title in ((auroc, "image AUROC"), (alarms, "false alarms on unseen normals, %")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("normal images learned")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    auroc.legend(fontsize=7)
    return _save(fig, path)


def speed_vs_accuracy(rows: Iterable[Mapping[str, Any]], path: Path | str,
                      title: str = "") -> Path:
    """Batch-32 throughput against accuracy drop, one point per variant
    (``{"variant", "throughput", "accuracy_drop", "default"?}``)."""
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    for row in rows:
        drop = float(row["accuracy_drop"] or 0.0)
        colour = "tab:green" if row.get("default") else "tab:blue"
        ax.scatter([row["throughput"]], [drop], color=colour, zorder=3)
        ax.annotate(row["variant"], (row["throughput"], drop), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.axhline(0.5, color="tab:red", linestyle=":", label="accuracy guard (0.5 points)")
    ax.set_xlabel("batch-32 throughput, images/s")
    ax.set_ylabel("accuracy drop vs torch-fp32, points")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def serve_load(rows: Iterable[Mapping[str, Any]], path: Path | str) -> Path:
    """Served images/s against concurrent clients, one line per server
    (``{"server", "clients", "throughput"}``)."""
    lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        lines[row["server"]].append((int(row["clients"]), float(row["throughput"])))
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    for server, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=server)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("images/s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# Figures as recorded on the Benchmarks pages (2026-12-05, the project's 2-core machine).
# anomaly.md "Few normal images": means over two seeded draws, so one row per cell.
FEW_SHOT = [  # set, normal images, copies, image AUROC, false alarms
    ("deeppcb", 1, "dihedral", 0.603, 0.50), ("deeppcb", 2, "none", 0.643, 0.52),
    ("deeppcb", 2, "dihedral", 0.688, 0.30), ("deeppcb", 4, "none", 0.684, 0.05),
    ("deeppcb", 4, "dihedral", 0.702, 0.30), ("deeppcb", 8, "none", 0.787, 0.05),
    ("deeppcb", 8, "dihedral", 0.856, 0.05), ("deeppcb", 80, "none", 0.998, 0.0),
    ("BDP", 1, "dihedral", 0.999, 0.38), ("BDP", 2, "none", 0.999, 0.19),
    ("BDP", 2, "dihedral", 0.998, 0.12), ("BDP", 4, "none", 0.999, 0.06),
    ("BDP", 4, "dihedral", 1.000, 0.22), ("BDP", 8, "none", 1.000, 0.0),
    ("BDP", 8, "dihedral", 1.000, 0.03), ("BDP", 32, "none", 1.000, 0.0),
    ("FLR", 1, "dihedral", 1.000, 0.84), ("FLR", 2, "none", 1.000, 0.25),
    ("FLR", 2, "dihedral", 1.000, 0.06), ("FLR", 4, "none", 1.000, 0.03),
    ("FLR", 4, "dihedral", 1.000, 0.12), ("FLR", 8, "none", 1.000, 0.03),
    ("FLR", 8, "dihedral", 1.000, 0.06), ("FLR", 32, "none", 1.000, 0.0),
]
# vit.md "Through vitkit optimize": the fine-tuned offline ViT, batch-32 img/s and drop.
VIT_OPTIMIZE = [
    ("torch-fp32", 18.8, 0.0, False), ("onnx-fp32", 16.6, 0.0, False),
    ("torch-bf16", 70.6, 0.0, False), ("torch-dynamic-int8", 23.1, 2.61, False),
    ("openvino-bf16", 113.8, 0.0, False), ("openvino-int8", 118.4, 0.0, True),
]
# serve.md: the demo's classifier, images/s at 1, 16 and 32 clients.
SERVE_LOAD = {
    "vitkit, batching on": (35, 69, 61),
    "vitkit, batching off": (35, 36, 36),
    "plain FastAPI endpoint": (34, 46, 47),
}


def recorded(out: Path) -> list[Path]:
    """Every docs plot from the recorded figures."""
    return [
        few_shot([{"set": s, "shots": n, "augment": a, "image_auroc": au, "false_alarms": fa}
                  for s, n, a, au, fa in FEW_SHOT], out / "anomaly_few_shot.png"),
        speed_vs_accuracy([{"variant": v, "throughput": t, "accuracy_drop": d, "default": dflt}
                           for v, t, d, dflt in VIT_OPTIMIZE], out / "vit_optimize.png",
                          "vit_small_patch14_dinov2 fine-tuned on hymenoptera"),
        serve_load([{"server": s, "clients": c, "throughput": t}
                    for s, figures in SERVE_LOAD.items()
                    for c, t in zip((1, 16, 32), figures, strict=True)],
                   out / "serve_load.png"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["recorded"])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/img"))
    args = parser.parse_args()
    for path in recorded(args.out):
        print(path)


if __name__ == "__main__":
    main()
