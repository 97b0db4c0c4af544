"""PatchCore speed, measured as ratios within one run (this machine is shared and noisy).

1. Greedy coreset: 200 images x 28x28 patches = 156,800 features, ratio 0.1 = 15,680
   selections. The textbook loop (``naive_greedy_coreset``, one pass over all N x d projected
   features per selection, like anomalib's) and a tighter textbook loop (one matrix-vector
   product per selection) run for a few hundred selections and are extrapolated; vitkit's
   ``greedy_coreset`` runs in full. Its first selections are checked against the naive ones.
2. Scoring: one image's 784 patches against the 15,680-entry bank, float32 vs the bfloat16
   ranking with float32 re-rank (``low_precision``), and how often the two disagree.

Features are realistic by default: efficientnet_lite0 (offline ImageNet weights) on the
embedded textile images, stride-8 and stride-16 maps -> 40 + 112 = 152 dims. ``--features
random`` uses Gaussian noise instead (no demo extras needed; ``--dim 768`` for ViT-like
widths).

Usage: python bench/coreset_speed.py [--features efficientnet|random] [--images 200]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vitkit.anomaly.patchcore import (
    _coreset_inputs,
    greedy_coreset,
    locally_aware_patches,
    naive_greedy_coreset,
    nearest_neighbours,
    patchcore_scores,
)


def efficientnet_patches(n_images: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train patches (N, D), held-out image patches (1, D, h, w), grid side) from textiles."""
    import conformal_clip_data
    from PIL import Image

    from vitkit.anomaly.features import build_feature_backbone
    from vitkit.data import eval_transform

    root = Path(conformal_clip_data.textile_simulated_root())
    files = sorted((root / "nominal").glob("*.jpg"))[: n_images + 1]
    backbone, _ = build_feature_backbone("efficientnet_lite0", "auto", "patchcore", None, 224)
    transform = eval_transform(backbone.preprocessing)
    batches = []
    with torch.inference_mode():
        for start in range(0, len(files), 20):
            images = torch.stack([transform(Image.open(f).convert("RGB"))
                                  for f in files[start:start + 20]])
            batches.append(locally_aware_patches(backbone.extractor(images)))
    patches = torch.cat(batches)
    train, held_out = patches[:-1], patches[-1:]
    return train.permute(0, 2, 3, 1).reshape(-1, train.shape[1]), held_out, patches.shape[-1]


def random_patches(n_images: int, dim: int = 152,
                   side: int = 28) -> tuple[torch.Tensor, torch.Tensor, int]:
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(n_images * side * side, dim, generator=gen)
    return train, torch.randn(1, dim, side, side, generator=gen), side


def matvec_greedy(features: torch.Tensor, n_select: int, projection_dim: int | None,
                  seed: int) -> torch.Tensor:
    """The textbook loop written tightly: ||x||^2 - 2 x.c + ||c||^2 as one matvec per step."""
    points, start = _coreset_inputs(features, n_select, projection_dim, seed)
    norms = (points * points).sum(dim=1)
    min_distance = torch.full((points.shape[0],), math.inf)
    selected = [start]
    for _ in range(n_select - 1):
        newest = selected[-1]
        distance = torch.addmv(norms, points, points[newest], alpha=-2.0).add_(norms[newest])
        torch.minimum(min_distance, distance, out=min_distance)
        min_distance[newest] = -math.inf
        selected.append(int(torch.argmax(min_distance)))
    return torch.tensor(selected)


def best_time(function: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` runs: the least disturbed by other jobs on the machine."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_coreset(features: torch.Tensor, ratio: float, projection_dim: int,
                  naive_steps: int) -> torch.Tensor:
    n_select = math.ceil(ratio * features.shape[0])
    print(f"coreset: {features.shape[0]} x {features.shape[1]} features -> {n_select} "
          f"(projection {projection_dim}), torch threads {torch.get_num_threads()}")
    start = time.perf_counter()
    naive = naive_greedy_coreset(features, naive_steps, projection_dim, seed=0)
    naive_rate = naive_steps / (time.perf_counter() - start)
    start = time.perf_counter()
    matvec = matvec_greedy(features, naive_steps, projection_dim, seed=0)
    matvec_rate = naive_steps / (time.perf_counter() - start)
    greedy_coreset(features, 64, projection_dim, seed=0)  # warm-up: first-touch page faults
    start = time.perf_counter()
    selected = greedy_coreset(features, n_select, projection_dim, seed=0)
    fast_seconds = time.perf_counter() - start
    fast_rate = n_select / fast_seconds
    agree = int((selected[:naive_steps] == naive).sum())
    print(f"  textbook (naive_greedy_coreset) {naive_rate:8.1f} sel/s -> "
          f"{n_select / naive_rate:7.1f} s extrapolated ({naive_steps} steps run)")
    print(f"  textbook, one matvec per step   {matvec_rate:8.1f} sel/s -> "
          f"{n_select / matvec_rate:7.1f} s extrapolated (same first selections: "
          f"{bool(torch.equal(matvec, naive))})")
    print(f"  vitkit greedy_coreset           {fast_rate:8.1f} sel/s -> {fast_seconds:7.1f} s")
    print(f"  speed-up vs textbook x{fast_rate / naive_rate:.1f}, vs matvec loop "
          f"x{fast_rate / matvec_rate:.1f}; first {naive_steps} selections identical to the "
          f"naive ones: {agree}/{naive_steps}")
    return selected


def bench_scoring(bank: torch.Tensor, held_out: torch.Tensor, extra_queries: torch.Tensor,
                  repeats: int) -> None:
    dim = bank.shape[1]
    queries = held_out.permute(0, 2, 3, 1).reshape(-1, dim)
    print(f"scoring: {queries.shape[0]} queries vs a bank of {bank.shape[0]} x {dim}")
    for k in (1, 9):
        exact_time = best_time(lambda k=k: nearest_neighbours(queries, bank, k), repeats)
        low_time = best_time(
            lambda k=k: nearest_neighbours(queries, bank, k, low_precision=True), repeats)
        exact_d, exact_i = nearest_neighbours(extra_queries, bank, k)
        low_d, low_i = nearest_neighbours(extra_queries, bank, k, low_precision=True)
        differ = float((exact_i != low_i).any(dim=1).float().mean())
        change = float((exact_d - low_d).abs().max())
        print(f"  nearest_neighbours k={k}: float32 {exact_time * 1e3:6.1f} ms, low_precision "
              f"{low_time * 1e3:6.1f} ms (x{exact_time / low_time:.2f}); on "
              f"{extra_queries.shape[0]} queries the neighbour lists differ for "
              f"{100 * differ:.3f}%, max distance change {change:.2e}")
    exact_time = best_time(lambda: patchcore_scores(held_out, bank), repeats)
    low_time = best_time(lambda: patchcore_scores(held_out, bank, low_precision=True), repeats)
    exact, low = patchcore_scores(held_out, bank), patchcore_scores(held_out, bank,
                                                                    low_precision=True)
    print(f"  patchcore_scores (1 image, b=9): float32 {exact_time * 1e3:6.1f} ms, low_precision "
          f"{low_time * 1e3:6.1f} ms (x{exact_time / low_time:.2f}); image score change "
          f"{float((exact.image_scores - low.image_scores).abs().max()):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", choices=["efficientnet", "random"], default="efficientnet")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--dim", type=int, default=152, help="feature dim of --features random")
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--projection-dim", type=int, default=128)
    parser.add_argument("--naive-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    start = time.perf_counter()
    if args.features == "efficientnet":
        try:
            features, held_out, side = efficientnet_patches(args.images)
        except ImportError:
            print("demo extras missing (pip install 'vitkit[demo]'): using random features")
            features, held_out, side = random_patches(args.images)
    else:
        features, held_out, side = random_patches(args.images, args.dim)
    print(f"{args.features} features ready in {time.perf_counter() - start:.1f} s "
          f"({args.images} images x {side}x{side} patches)")

    selected = bench_coreset(features, args.ratio, args.projection_dim, args.naive_steps)
    bank = features[selected].contiguous()
    outside = torch.ones(features.shape[0], dtype=torch.bool)
    outside[selected] = False
    pool = features[outside]
    extra = pool[torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(1))[:20000]]
    bench_scoring(bank, held_out, extra, args.repeats)


if __name__ == "__main__":
    main()
