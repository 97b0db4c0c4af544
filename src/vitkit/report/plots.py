"""Training plots rendered with matplotlib's object API (no pyplot, no global backend).

``render_*`` functions return PNG bytes; ``plot_*`` functions write them atomically.
Kept whole (~460 lines): the run's four figures (learning curves, confusion matrix,
reliability, robustness) share one look — colours, DPI, tick and label helpers — kept here.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from vitkit.atomic import write_bytes_atomic
from vitkit.evaluate.calibration import ReliabilityBins

_DPI = 110
_TRAIN_COLOR = "#1f6feb"
_VAL_COLOR = "#d1242f"
_STAGE_COLORS = ["#8250df", "#1a7f37", "#bf8700", "#0969da", "#cf222e", "#57606a"]
_MAX_ANNOTATED_CLASSES = 30
_MAX_TICK_LABEL = 22


def plot_learning_curves(rows: Sequence[Mapping[str, object]], out: Path) -> Path:
    """Plot loss and accuracy per epoch, with training stages shaded, to a PNG file.

    Args:
        rows: Records of ``metrics.csv`` (keys ``epoch, stage, lr, train_loss, train_acc,
            val_loss, val_acc, ...``). Values may be strings, numbers, ``''`` or ``None``
            (missing).
        out: Destination PNG path (written atomically; the parent is created if needed).

    Returns:
        ``out``.

    Raises:
        ValueError: If ``rows`` is empty or holds no loss or accuracy value at all.
    """
    return write_bytes_atomic(Path(out), render_learning_curves(rows))


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]], labels: Sequence[str], out: Path, normalize: bool = False
) -> Path:
    """Plot a confusion matrix with counts annotated to a PNG file.

    Args:
        cm: ``C x C`` counts; rows are true classes, columns predicted classes.
        labels: The ``C`` class names, in matrix order.
        out: Destination PNG path (written atomically; the parent is created if needed).
        normalize: Color cells by row fraction (recall per true class) and annotate the
            percentage under each count.

    Returns:
        ``out``.

    Raises:
        ValueError: If ``cm`` is not square, has negative entries, or does not match
            ``labels``.
    """
    return write_bytes_atomic(Path(out), render_confusion_matrix(cm, labels, normalize))


def render_learning_curves(rows: Sequence[Mapping[str, object]]) -> bytes:
    """Render :func:`plot_learning_curves` to PNG bytes."""
    if not rows:
        raise ValueError("no metrics rows to plot")
    series = {
        key: np.array([_number(row.get(key)) for row in rows])
        for key in ("train_loss", "val_loss", "train_acc", "val_acc")
    }
    if all(np.isnan(values).all() for values in series.values()):
        raise ValueError("metrics rows hold no loss or accuracy values to plot")
    x = _epochs(rows)
    stages = [_text(row.get("stage")) for row in rows]

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, kind in ((ax_loss, "loss"), (ax_acc, "acc")):
        _shade_stages(ax, x, stages)
        for split, color in (("train", _TRAIN_COLOR), ("val", _VAL_COLOR)):
            values = series[f"{split}_{kind}"]
            ok = ~np.isnan(values)
            if ok.any():
                ax.plot(
                    x[ok],
                    values[ok],
                    color=color,
                    marker="o",
                    markersize=3.5,
                    linewidth=1.8,
                    label=split,
                )
        # Headroom so the stage names at the top do not sit on the curves.
        ax.margins(y=0.12)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, color="#d0d7de", linewidth=0.6, alpha=0.8)
        ax.spines[["top", "right"]].set_visible(False)
    ax_loss.set_title("Loss", loc="left", fontweight="bold")
    ax_acc.set_title("Accuracy", loc="left", fontweight="bold")
    # One legend above the panels: inside an axes it would hide curves or stage names.
    handles, names = max(
        (ax.get_legend_handles_labels() for ax in (ax_loss, ax_acc)), key=lambda pair: len(pair[0])
    )
    if handles:
        fig.legend(handles, names, loc="outside upper right", ncols=len(handles), frameon=False)

    accs = np.concatenate([series["train_acc"], series["val_acc"]])
    finite = accs[~np.isnan(accs)]
    # Accuracies are fractions in vitkit's metrics.csv; accept percentages as well.
    scale = 100.0 if finite.size and finite.max() > 1.0 + 1e-9 else 1.0
    ax_acc.yaxis.set_major_formatter(PercentFormatter(xmax=scale, decimals=0))
    val = series["val_acc"]
    if not np.isnan(val).all():
        best = int(np.nanargmax(val))
        ax_acc.plot(
            [x[best]],
            [val[best]],
            marker="*",
            markersize=13,
            color=_VAL_COLOR,
            markeredgecolor="white",
            zorder=5,
        )
        ax_acc.annotate(
            f"best {val[best] / scale:.1%}",
            (x[best], val[best]),
            xytext=(0, -16),
            textcoords="offset points",
            ha="center",
            fontsize=9,
            color=_VAL_COLOR,
        )
    return _png(fig)


def render_confusion_matrix(
    cm: Sequence[Sequence[int]], labels: Sequence[str], normalize: bool = False
) -> bytes:
    """Render :func:`plot_confusion_matrix` to PNG bytes."""
    counts = _check_cm(cm, labels)
    n = counts.shape[0]
    row_sums = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)
    shown = fractions if normalize else counts.astype(np.float64)
    vmax = 1.0 if normalize else max(float(shown.max()), 1.0)

    side = min(max(4.8, 0.55 * n + 2.6), 22.0)
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    if normalize:
        bar.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    else:
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    names = [_tick_label(label) for label in labels]
    ax.set_xticks(range(n), names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(
        "Confusion matrix" + (" (row-normalized)" if normalize else ""),
        loc="left",
        fontweight="bold",
    )
    if n <= _MAX_ANNOTATED_CLASSES:
        size = max(6.0, 12.0 - n / 3)
        for i in range(n):
            for j in range(n):
                text = f"{counts[i, j]}"
                if normalize:
                    text += f"\n{fractions[i, j]:.0%}"
                dark = shown[i, j] > 0.55 * vmax
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="white" if dark else "#24292f",
                )
    return _png(fig)


def plot_reliability(
    bins: Mapping[str, Sequence] | object,
    out: Path,
    after: Mapping[str, Sequence] | object | None = None,
    temperature: float | None = None,
) -> Path:
    """Plot a reliability diagram (and, with ``after``, the one after temperature scaling).

    Bars are the accuracy of each confidence bin; the diagonal is perfect calibration; the
    shaded part of each bar is its gap to the bin's mean confidence. ECE is in the title.

    Args:
        bins: Reliability bins before scaling: a ``ReliabilityBins`` or its ``to_dict()``
            (``edges``, ``counts``, ``accuracy``, ``confidence``; empty bins ``None``).
        out: Destination PNG path (written atomically).
        after: The same after temperature scaling, drawn in a second panel.
        temperature: The fitted temperature, named in the second panel's title.

    Returns:
        ``out``.
    """
    return write_bytes_atomic(Path(out), render_reliability(bins, after, temperature))


def render_reliability(
    bins: Mapping[str, Sequence] | object,
    after: Mapping[str, Sequence] | object | None = None,
    temperature: float | None = None,
) -> bytes:
    """Render :func:`plot_reliability` to PNG bytes."""
    panels = [("Before temperature scaling" if after is not None else "Reliability", bins)]
    if after is not None:
        name = f"After (T = {temperature:.3g})" if temperature is not None else "After"
        panels.append((name, after))
    fig = Figure(figsize=(4.6 * len(panels), 4.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, panel_bins) in zip(axes, panels, strict=True):
        _reliability_panel(ax, _bins_dict(panel_bins), name)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=len(handles), frameon=False,
               fontsize=8)
    return _png(fig)


def _reliability_panel(ax: Axes, bins: Mapping[str, Sequence], title: str) -> None:
    edges = np.asarray(bins["edges"], dtype=np.float64)
    counts = np.asarray(bins["counts"], dtype=np.float64)
    acc = np.array([_number(v) for v in bins["accuracy"]])
    conf = np.array([_number(v) for v in bins["confidence"]])
    filled = (counts > 0) & ~np.isnan(acc) & ~np.isnan(conf)
    lo, width = edges[:-1][filled], np.diff(edges)[filled]
    total = counts.sum()
    ece = _ece(counts, acc, conf)
    ax.bar(lo, acc[filled], width=width, align="edge", color=_TRAIN_COLOR, alpha=0.85,
           edgecolor="white", linewidth=0.8, label="accuracy")
    gap_lo = np.minimum(acc[filled], conf[filled])
    ax.bar(lo, np.abs(acc[filled] - conf[filled]), bottom=gap_lo, width=width, align="edge",
           color=_VAL_COLOR, alpha=0.3, hatch="//", edgecolor=_VAL_COLOR, linewidth=0.5,
           label="gap to confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="#57606a", linewidth=1.2,
            label="perfect calibration")
    for x, w, count in zip(lo, width, counts[filled], strict=True):
        # How many images each bar stands for: a bar of two images says little.
        ax.text(x + w / 2, 0.015, f"{int(count)}", ha="center", va="bottom", fontsize=6,
                color="white", rotation=90)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {ece:.3f}  (n = {int(total)}; images per bar at its foot)",
                 loc="left", fontsize=10, fontweight="bold")
    ax.grid(True, color="#d0d7de", linewidth=0.6, alpha=0.8)
    ax.spines[["top", "right"]].set_visible(False)


def _ece(counts: np.ndarray, accuracy: np.ndarray, confidence: np.ndarray) -> float:
    """The ECE as evaluate computes it (its one definition), from bins whose empty or missing
    values are NaN."""

    def value(number: float) -> float | None:
        return None if math.isnan(number) else float(number)

    return ReliabilityBins(edges=[], counts=[int(c) for c in counts],
                           accuracy=[value(a) for a in accuracy],
                           confidence=[value(c) for c in confidence]).ece


def _bins_dict(bins: object) -> Mapping[str, Sequence]:
    to_dict = getattr(bins, "to_dict", None)
    data = to_dict() if callable(to_dict) else bins
    if not isinstance(data, Mapping) or not {"edges", "counts", "accuracy",
                                             "confidence"} <= data.keys():
        raise ValueError("reliability bins need edges, counts, accuracy and confidence")
    return data


def plot_robustness(result: Mapping[str, object], out: Path) -> Path:
    """Plot accuracy against severity for each corruption and against epsilon for each
    attack (one panel each; the dashed line is the clean accuracy) to a PNG file.

    Args:
        result: ``vitkit robustness --json`` output: ``clean_accuracy``, ``corruptions``
            (``name``, ``severity``, ``accuracy``) and ``adversarial`` (``attack``,
            ``epsilon`` in 1/255 units, ``accuracy``, ``transferred``).
        out: Destination PNG path (written atomically).

    Returns:
        ``out``.
    """
    return write_bytes_atomic(Path(out), render_robustness(result))


def render_robustness(result: Mapping[str, object]) -> bytes:
    """Render :func:`plot_robustness` to PNG bytes."""
    clean = _number(result.get("clean_accuracy"))
    families: dict[str, list[tuple[float, float]]] = {}
    for row in _rows(result, "corruptions"):
        families.setdefault(str(row.get("name")), []).append(
            (_number(row.get("severity")), _number(row.get("accuracy"))))
    attacks: dict[str, list[tuple[float, float]]] = {}
    transferred = False
    for row in _rows(result, "adversarial"):
        attacks.setdefault(str(row.get("attack")).upper(), []).append(
            (_number(row.get("epsilon")), _number(row.get("accuracy"))))
        transferred = transferred or bool(row.get("transferred"))
    panels = len(families) + (1 if attacks else 0)
    if panels == 0:
        raise ValueError("no corruption or attack results to plot")
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(4.0 * columns, 3.2 * rows), layout="constrained")
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax, (name, points) in zip(axes, families.items(), strict=False):
        if name in _IDENTITY and not math.isnan(clean):
            points.append((_IDENTITY[name], clean))  # zero strength: the clean accuracy
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=_TRAIN_COLOR,
                linewidth=1.8)
        _robustness_axes(ax, name.replace("_", " "), _SEVERITY_UNITS.get(name, "severity"),
                         clean)
    if attacks:
        ax = axes[len(families)]
        for (name, points), color in zip(attacks.items(), _STAGE_COLORS, strict=False):
            if not math.isnan(clean):
                points.append((0.0, clean))
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=color,
                    linewidth=1.8, label=name)
        title = "adversarial" + (" (transferred from fp32)" if transferred else "")
        _robustness_axes(ax, title, "epsilon (/255)", clean)
        ax.legend(fontsize=8, frameon=False)
    for ax in axes[panels:]:
        ax.set_visible(False)
    return _png(fig)


_SEVERITY_UNITS = {"noise": "sigma ([0,1] pixels)", "blur": "sigma (px)",
                   "jpeg": "quality", "brightness": "factor", "contrast": "factor"}
# The strength at which a corruption changes nothing (JPEG has none: quality 100 still loses).
_IDENTITY = {"noise": 0.0, "blur": 0.0, "brightness": 1.0, "contrast": 1.0}


def _rows(result: Mapping[str, object], key: str) -> list[Mapping[str, object]]:
    rows = result.get(key) or []
    return [row for row in rows if isinstance(row, Mapping)] if isinstance(rows, list) else []


def _robustness_axes(ax: Axes, title: str, xlabel: str, clean: float) -> None:
    if not math.isnan(clean):
        ax.axhline(clean, linestyle="--", color="#57606a", linewidth=1, label="clean")
    if xlabel == "quality":
        ax.invert_xaxis()  # lower quality is the stronger corruption
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.set_title(title, loc="left", fontweight="bold", fontsize=10)
    ax.set_xlabel(xlabel)
    ax.grid(True, color="#d0d7de", linewidth=0.6, alpha=0.8)
    ax.spines[["top", "right"]].set_visible(False)


def _png(fig: Figure) -> bytes:
    """Encode a figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, facecolor="white")
    return buffer.getvalue()


def _shade_stages(ax: Axes, x: np.ndarray, stages: list[str]) -> None:
    """Shade each run of consecutive epochs of one stage and name it at the top."""
    if not any(stages):
        return
    colors: dict[str, str] = {}
    start = 0
    for i in range(1, len(stages) + 1):
        if i < len(stages) and stages[i] == stages[start]:
            continue
        name = stages[start]
        color = colors.setdefault(name, _STAGE_COLORS[len(colors) % len(_STAGE_COLORS)])
        lo, hi = x[start] - 0.5, x[i - 1] + 0.5
        ax.axvspan(lo, hi, color=color, alpha=0.07, linewidth=0)
        if start > 0:
            ax.axvline(lo, color=color, linestyle="--", linewidth=1, alpha=0.6)
        if name:
            ax.text(
                (lo + hi) / 2,
                0.98,
                _mpl_safe(name),
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=9,
                color=color,
                fontweight="bold",
            )
        start = i


def _epochs(rows: Sequence[Mapping[str, object]]) -> np.ndarray:
    """Epoch numbers, or 1..N when they are missing or not strictly increasing."""
    epochs = np.array([_number(row.get("epoch")) for row in rows])
    if np.isnan(epochs).any() or (len(epochs) > 1 and np.any(np.diff(epochs) <= 0)):
        return np.arange(1, len(rows) + 1, dtype=np.float64)
    return epochs


def _number(value: object) -> float:
    """A CSV cell as a float; ``nan`` for missing or unparsable values."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _text(value: object) -> str:
    """A CSV cell as stripped text; ``''`` for missing."""
    return "" if value is None else str(value).strip()


def _mpl_safe(text: str) -> str:
    """Escape ``$`` so matplotlib does not parse user text as mathtext."""
    return text.replace("$", r"\$")


def _tick_label(label: str) -> str:
    """Shorten long class names so the matrix keeps its size."""
    label = _mpl_safe(str(label))
    return label if len(label) <= _MAX_TICK_LABEL else label[: _MAX_TICK_LABEL - 1] + "…"


def _check_cm(cm: Sequence[Sequence[int]], labels: Sequence[str]) -> np.ndarray:
    """Validate a confusion matrix and return it as an int64 array."""
    try:
        counts = np.asarray(cm, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"confusion matrix must be a square list of counts: {err}") from None
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {counts.shape}")
    if counts.shape[0] != len(labels):
        raise ValueError(
            f"confusion matrix is {counts.shape[0]}x{counts.shape[1]} but there are "
            f"{len(labels)} labels"
        )
    if not np.all(np.isfinite(counts)) or counts.min() < 0 or np.any(counts % 1):
        raise ValueError("confusion matrix entries must be non-negative integers")
    return counts.astype(np.int64)
