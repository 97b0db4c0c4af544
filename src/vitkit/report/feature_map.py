"""The feature map: a 2-D t-SNE view of image features, coloured by class.

Features are first reduced to at most 50 dimensions with PCA (the usual t-SNE recipe: it
removes noise and makes the neighbour search cheap), then embedded with scikit-learn's
``TSNE``. Perplexity is clipped for small sets (t-SNE needs perplexity < n), and large sets are
subsampled to at most ``max_points``, the same number per class where possible, so a big
class cannot crowd out a small one. Everything is seeded: the same features give the same map.

Files (written by :func:`write_feature_map`): ``feature_map.png`` and ``feature_map.json``
(points, per-point true and predicted label, paths, perplexity, n).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vitkit.atomic import write_bytes_atomic, write_text_atomic
from vitkit.report.plots import _mpl_safe, _png, _tick_label

FEATURE_MAP_PNG = "feature_map.png"
FEATURE_MAP_JSON = "feature_map.json"
DEFAULT_MAX_POINTS = 2000
MIN_POINTS = 5
_PCA_DIMS = 50
_DEFAULT_PERPLEXITY = 30.0
_KNN = 5
_THREADED_FROM = 1000
# Colour-blind friendly palette (Okabe-Ito, then tab20 for many classes).
_PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
            "#000000"]


@dataclass
class FeatureMap:
    """A 2-D embedding of (a subsample of) the images.

    Attributes:
        points: (n, 2) t-SNE coordinates.
        targets: (n,) true class index of each point.
        predictions: (n,) predicted class index of each point.
        indices: (n,) position of each point in the input arrays.
        perplexity: The perplexity used (clipped for small n).
        n_total: Number of input images before subsampling.
        knn_purity: Share of each point's 5 nearest 2-D neighbours with its true class,
            averaged (1.0: classes form clean islands).
        seed: Seed of the subsample and of t-SNE.
    """

    points: np.ndarray
    targets: np.ndarray
    predictions: np.ndarray
    indices: np.ndarray
    perplexity: float
    n_total: int
    knn_purity: float
    seed: int


def balanced_subsample(targets: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` items, as evenly spread over classes as the
    class sizes allow (a class smaller than its share gives its rest to the others)."""
    targets = np.asarray(targets)
    if len(targets) <= max_points:
        return np.arange(len(targets))
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(targets == c)) for c in np.unique(targets)]
    take = [0] * len(pools)
    left = max_points
    # Water-filling: give each class an equal share of what is left; small classes saturate.
    while left > 0:
        open_classes = [i for i, pool in enumerate(pools) if take[i] < len(pool)]
        share = max(1, left // len(open_classes))
        for i in open_classes:
            extra = min(share, len(pools[i]) - take[i], left)
            take[i] += extra
            left -= extra
            if left == 0:
                break
    return np.sort(np.concatenate([pool[:k] for pool, k in zip(pools, take, strict=True)]))


def tsne_2d(features: np.ndarray, seed: int = 0,
            perplexity: float = _DEFAULT_PERPLEXITY) -> tuple[np.ndarray, float]:
    """(n, 2) t-SNE coordinates of ``features`` (n, D) and the perplexity actually used.

    Raises:
        ValueError: Fewer than :data:`MIN_POINTS` rows, or non-finite values.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < MIN_POINTS:
        raise ValueError(f"a feature map needs at least {MIN_POINTS} images, got {len(x)}")
    if not np.isfinite(x).all():
        raise ValueError("features hold NaN or infinite values")
    dims = min(_PCA_DIMS, x.shape[0], x.shape[1])
    if dims < x.shape[1]:
        x = PCA(n_components=dims, random_state=seed).fit_transform(x)
    # t-SNE needs perplexity < n; a third of n keeps several neighbours' worth of spread.
    used = float(min(perplexity, max(1.0, (len(x) - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=used, init="pca", learning_rate="auto",
                random_state=seed, n_jobs=1)
    # Below ~1,000 points OpenMP threads cost more than they give: 120 points took 7.5 s with
    # them and 0.6 s on one thread (2 busy cores).
    with threadpool_limits(limits=1 if len(x) < _THREADED_FROM else None):
        points = tsne.fit_transform(x)
    return points.astype(np.float32), used


def knn_purity(points: np.ndarray, targets: np.ndarray, k: int = _KNN) -> float:
    """Mean share of each point's ``k`` nearest neighbours (itself excluded) of its class."""
    points = np.asarray(points, dtype=np.float64)
    targets = np.asarray(targets)
    k = min(k, len(points) - 1)
    if k < 1:
        return float("nan")
    norms = (points**2).sum(1)
    squared = norms[:, None] + norms[None, :] - 2.0 * points @ points.T  # (n, n)
    np.fill_diagonal(squared, np.inf)
    neighbours = np.argsort(squared, axis=1, kind="stable")[:, :k]  # (n, k)
    return float((targets[neighbours] == targets[:, None]).mean())


def compute_feature_map(features: np.ndarray, targets: np.ndarray, predictions: np.ndarray,
                        seed: int = 0, max_points: int = DEFAULT_MAX_POINTS) -> FeatureMap:
    """Subsamples (class-balanced), embeds with t-SNE and measures the neighbourhood purity.

    Raises:
        ValueError: Fewer than :data:`MIN_POINTS` images, or lengths that differ.
    """
    features = np.asarray(features)
    targets = np.asarray(targets).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    if not len(features) == len(targets) == len(predictions):
        raise ValueError(f"features, targets and predictions differ in length: "
                         f"{len(features)}, {len(targets)}, {len(predictions)}")
    keep = balanced_subsample(targets, max_points, seed)
    points, perplexity = tsne_2d(features[keep], seed)
    return FeatureMap(points=points, targets=targets[keep], predictions=predictions[keep],
                      indices=keep, perplexity=perplexity, n_total=len(targets),
                      knn_purity=knn_purity(points, targets[keep]), seed=seed)


def render_feature_map(feature_map: FeatureMap, labels: Sequence[str]) -> bytes:
    """PNG of the map: one colour per true class, misclassified points ringed in red."""
    fig = Figure(figsize=(7.5, 6.2), layout="constrained")
    ax = fig.subplots()
    colours = _colours(len(labels))
    size = 22.0 if len(feature_map.points) <= 500 else 10.0
    for c, label in enumerate(labels):
        mine = feature_map.targets == c
        if mine.any():
            ax.scatter(feature_map.points[mine, 0], feature_map.points[mine, 1], s=size,
                       color=colours[c], alpha=0.8, linewidths=0, label=_tick_label(label))
    wrong = feature_map.targets != feature_map.predictions
    if wrong.any():
        ax.scatter(feature_map.points[wrong, 0], feature_map.points[wrong, 1], s=size * 3.2,
                   facecolors="none", edgecolors="#d1242f", linewidths=1.2)
    ax.set_axis_off()  # t-SNE axes have no units or meaning
    ax.set_title(_mpl_safe(f"t-SNE of {len(feature_map.points)} validation images "
                           f"(perplexity {feature_map.perplexity:.0f})"), loc="left",
                 fontweight="bold")
    handles, names = ax.get_legend_handles_labels()
    if wrong.any():
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none",
                              markeredgecolor="#d1242f", markersize=8))
        names.append(f"misclassified ({int(wrong.sum())})")
    if len(handles) <= 24:
        fig.legend(handles, names, loc="outside right upper", frameon=False, fontsize=9)
    return _png(fig)


def feature_map_record(feature_map: FeatureMap, labels: Sequence[str],
                       paths: Sequence[str] | None = None) -> dict:
    """What ``feature_map.json`` holds: per point its coordinates, labels and path."""
    names = [str(label) for label in labels]
    return {
        "method": "t-SNE",
        "n": len(feature_map.points),
        "n_total": feature_map.n_total,
        "perplexity": feature_map.perplexity,
        "seed": feature_map.seed,
        "knn_purity": feature_map.knn_purity,
        "classes": names,
        "points": [[round(float(x), 4), round(float(y), 4)] for x, y in feature_map.points],
        "labels": [names[int(t)] for t in feature_map.targets],
        "predictions": [names[int(p)] for p in feature_map.predictions],
        "paths": [str(paths[int(i)]) for i in feature_map.indices] if paths is not None else [],
    }


def write_feature_map(run_dir: Path, feature_map: FeatureMap, labels: Sequence[str],
                      paths: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Writes ``feature_map.png`` and ``feature_map.json`` into ``run_dir``."""
    run_dir = Path(run_dir)
    png = write_bytes_atomic(run_dir / FEATURE_MAP_PNG, render_feature_map(feature_map, labels))
    record = feature_map_record(feature_map, labels, paths)
    data = write_text_atomic(run_dir / FEATURE_MAP_JSON, json.dumps(record, indent=1) + "\n")
    return png, data


def _colours(n: int) -> list[str]:
    if n <= len(_PALETTE):
        return _PALETTE[:n]
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["tab20"]
    return [to_hex(cmap(i % 20)) for i in range(n)]
