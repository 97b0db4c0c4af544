"""Which OOD score for which backbone? Every method on a bundle's val split vs OOD folders.

For each method: AUROC and FPR95 (share of OOD images accepted when 95% of the val images
are), then two accept-rate views of the deployed threshold (95th percentile of val scores):
  - "val kept" / "out refused" with the threshold set on all val images (what `ood fit` does;
    val kept is ~95% by construction);
  - "held-out val kept": threshold set on one half of val, measured on the other half (both
    ways, averaged), i.e. what to expect on new in-distribution images.
Then knn for several k and ViM for several subspace sizes.

Usage: python bench/ood_methods.py [BUNDLE] [--out DIR ...] [--cache FILE]
  BUNDLE defaults to /tmp/bench-distill/a/teacher/bundle (efficientnet_lite0 fine-tuned on
  hymenoptera, val accuracy 0.941); --out defaults to ../shared/datasets/ood_textures_dtd.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from vitkit.compress.reference import reference_images
from vitkit.ood.metrics import accept_rate, accept_threshold, auroc, fpr_at_tpr
from vitkit.ood.scores import METHODS, OodMethod, Stats, TrainingSet, fit_knn, fit_vim
from vitkit.predictor.embed import Embeddings, embed_paths
from vitkit.predictor.predict import expand_paths, load
from vitkit.workflows.ood import backbone_family, default_method, embed_labelled, training_set

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
BUNDLE = "/tmp/bench-distill/a/teacher/bundle"


def embed_all(bundle: str, out_dirs: list[str], cache: Path | None
              ) -> tuple[TrainingSet, Embeddings, dict[str, Embeddings], str]:
    predictor = load(bundle, ood=False)
    model = predictor.torch_model()
    family = backbone_family(model)
    if cache is not None and cache.is_file():
        saved = torch.load(cache, weights_only=True)
        emb = {k: Embeddings(v["features"], v["logits"], [""] * len(v["features"]))
               for k, v in saved.items() if k != "train"}
        t = saved["train"]
        train = Embeddings(t["features"], t["logits"], [""] * len(t["features"]), t["targets"])
    else:
        meta = predictor.meta
        found_train, found_val = (reference_images(meta, None, s) for s in ("train", "val"))
        if found_train is None or found_val is None:
            raise SystemExit(f"the training data of {bundle} is not available")
        train = embed_labelled(predictor, found_train.samples, progress=False)
        emb = {"val": embed_labelled(predictor, found_val.samples, progress=False)}
        for folder in out_dirs:
            name = Path(folder).name
            if name in ("test", "train", "val", "good"):  # say which data set's test/
                name = "/".join(Path(folder).parts[-2:])
            emb[name] = embed_paths(predictor, expand_paths([folder])[0],
                                                 progress=False)
        if cache is not None:
            torch.save({k: {"features": v.features, "logits": v.logits, "targets": v.targets}
                        for k, v in {"train": train, **emb}.items()}, cache)
    return training_set(model, train), emb.pop("val"), emb, family


def row(name: str, stats: Stats, method: OodMethod, val: Embeddings,
        outs: dict[str, Embeddings], halves: tuple[np.ndarray, np.ndarray]) -> str:
    s_val = method.score(stats, val.features, val.logits).numpy()
    threshold = accept_threshold(s_val)
    a, b = halves
    held_out = np.mean([accept_rate(s_val[b], accept_threshold(s_val[a])),
                        accept_rate(s_val[a], accept_threshold(s_val[b]))])
    cells = []
    for out in outs.values():
        s_out = method.score(stats, out.features, out.logits).numpy()
        cells.append(f"{'':14s}{auroc(s_val, s_out):6.3f} {fpr_at_tpr(s_val, s_out):6.3f} "
                     f"{1 - accept_rate(s_out, threshold):8.1%}")
    return (f"{name:22s} " + " | ".join(cells)
            + f" | {accept_rate(s_val, threshold):6.1%} {held_out:9.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default=BUNDLE)
    parser.add_argument("--out", action="append", default=None,
                        help="OOD image folder (repeatable)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="save/load the embeddings here (re-runs skip the network)")
    args = parser.parse_args()
    out_dirs = args.out or [str(SHARED / "ood_textures_dtd")]

    started = time.perf_counter()
    train, val, outs, family = embed_all(args.bundle, out_dirs, args.cache)
    embed_seconds = time.perf_counter() - started
    order = np.random.default_rng(0).permutation(len(val))
    halves = (order[: len(val) // 2], order[len(val) // 2:])
    print(f"{args.bundle} ({family}): train {len(train.features)}, val {len(val)}, "
          + ", ".join(f"{k} {len(v)}" for k, v in outs.items())
          + f" (embedded in {embed_seconds:.0f} s)")
    header = " | ".join(f"{k[-20:]:>20s}: AUROC  FPR95  refused" for k in outs)
    print(f"{'method':22s} {header} | val kept  held-out val kept")
    for name, method in METHODS.items():
        if method.needs_head and train.head_weight is None:
            continue
        fit_started = time.perf_counter()
        stats = method.fit(train)
        line = row(name, stats, method, val, outs, halves)
        print(f"{line}   ({time.perf_counter() - fit_started:.1f} s)")
    print(f"default for {family}: {default_method(family)}")
    print("\nknn, k nearest neighbour:")
    for k in (1, 5, 10, 20, 50, 100):
        print(row(f"knn k={k}", fit_knn(train, k=k), METHODS["knn"], val, outs, halves))
    if train.head_weight is not None:
        print("\nvim, principal subspace size:")
        n, d = train.features.shape
        for dim in sorted({8, 32, 64, n // 2, min(n - 1, d - 1)}):
            print(row(f"vim dim={dim}", fit_vim(train, dim=dim), METHODS["vim"], val, outs,
                      halves))


if __name__ == "__main__":
    main()
