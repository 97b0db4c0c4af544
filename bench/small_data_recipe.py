"""Which small-data recipe: candidate training recipes on small labelled sets, in one run.

Every recipe trains for the same number of epochs (5 unless --epochs) on each set, and the
table prints held-out accuracy per set. Sets are class-per-folder views (symbolic links) built
from ../shared/datasets and the demo package's textile images, each split train/val/test
(seeded); hymenoptera keeps its own train/val and reports val:

    python bench/small_data_recipe.py --sets hymenoptera,textile --recipes today,staged
    python bench/small_data_recipe.py --sets dtd10,pcb2,paper4 --recipes today,staged

Tuning sets (where the recipe was chosen): hymenoptera, textile. Held-out sets (only
reported): dtd10, pcb2, paper4. See the README's "Small-data recipe" section.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _link_classes(root: Path, classes: dict[str, list[Path]], limit: int | None,
                  seed: int) -> Path:
    rng = random.Random(seed)
    for name, paths in classes.items():
        chosen = list(paths)
        rng.shuffle(chosen)
        target = root / name
        target.mkdir(parents=True)
        for i, path in enumerate(chosen[:limit]):
            (target / f"{i:04d}{path.suffix.lower()}").symlink_to(path)
    return root


def build_set(name: str, root: Path, seed: int = 0) -> tuple[Path, dict[str, Any]]:
    """(data folder, TrainConfig overrides for the split) for one named set."""
    if name == "hymenoptera":
        return SHARED / "hymenoptera", {}
    split = {"val_fraction": 0.2, "test_fraction": 0.3}
    if name == "textile":
        from conformal_clip_data import textile_simulated_root

        base = Path(textile_simulated_root())
        classes = {c.name: _images(c) for c in sorted(base.iterdir()) if c.is_dir()}
        return _link_classes(root / name, classes, limit=120, seed=seed), split
    if name == "dtd10":
        base = SHARED / "ood_textures_dtd"
        classes = {c.name: _images(c) for c in sorted(base.iterdir()) if c.is_dir()}
        return _link_classes(root / name, classes, limit=None, seed=seed), split
    if name == "pcb2":
        base = SHARED / "deeppcb"
        classes = {"good": _images(base / "train" / "good") + _images(base / "test" / "good"),
                   "defective": _images(base / "test" / "defective")}
        return _link_classes(root / name, classes, limit=None, seed=seed), split
    if name == "paper4":
        classes = {}
        for kind in ("PA_BDP01_TL", "PA_FLR01_TL"):
            base = SHARED / "piped_paper" / kind
            classes[f"{kind}_good"] = (_images(base / "train" / "good")
                                       + _images(base / "test" / "good"))
            classes[f"{kind}_impurity"] = _images(base / "test" / "impurity")
        return _link_classes(root / name, classes, limit=None, seed=seed), split
    raise SystemExit(f"unknown set {name!r}")


QUIET_TRUST = {"ood": False, "calibrate": False, "explain_examples": 0, "feature_map": False}

def _head_then_full(model: str, lr: float, layer_decay: float, ema: float | None = None,
                    **extra: Any) -> dict[str, Any]:
    """One head epoch, then every layer, batch 16; unweighted loss, as these were run."""
    return {"model": model, "batch_size": 16, "ema": ema, "class_weights": "none",
            "stages": {"head": {"share": 1}, "top": {"share": 0},
                       "full": {"share": 4, "lr": lr, "layer_decay": layer_decay}},
            **extra}


RECIPES: dict[str, dict[str, Any]] = {
    # the default before issue 18: three stages 0.3 / 0.3 / 0.4 of the epochs
    "today": {"model": "efficientnet_lite0", "batch_size": 32, "ema": None,
              "class_weights": "none",
              "stages": {"head": {"share": 0.3, "lr": 5e-3},
                         "top": {"share": 0.3, "lr": 1e-3, "blocks": 2},
                         "full": {"share": 0.4, "lr": 5e-4, "layer_decay": 0.75}}},
    # today's schedule on the larger backbone, with and without the weight average
    "today_lite2": {"model": "efficientnet_lite2", "batch_size": 32, "ema": None,
                    "class_weights": "none",
                    "stages": {"head": {"share": 0.3, "lr": 5e-3},
                               "top": {"share": 0.3, "lr": 1e-3, "blocks": 2},
                               "full": {"share": 0.4, "lr": 5e-4, "layer_decay": 0.75}}},
    "today_lite2_ema": {"model": "efficientnet_lite2", "batch_size": 32, "ema": 0.998,
                        "class_weights": "none",
                        "stages": {"head": {"share": 0.3, "lr": 5e-3},
                                   "top": {"share": 0.3, "lr": 1e-3, "blocks": 2},
                                   "full": {"share": 0.4, "lr": 5e-4, "layer_decay": 0.75}}},
    # the default after issue 18 (TrainConfig's own defaults): efficientnet_lite2, one head
    # epoch then every layer at 1e-3 with layer decay 0.8, batch 16, weight average 0.998
    "default": {},
    # the default as it was before class weighting was added (after pcb2 was seen)
    "default_unweighted": {"class_weights": "none"},
    "staged": _head_then_full("efficientnet_lite0", 2e-3, 0.9),
    "staged_lr1": _head_then_full("efficientnet_lite0", 1e-3, 0.8),
    "staged_lite1": _head_then_full("efficientnet_lite1", 2e-3, 0.9),
    "staged_lite2": _head_then_full("efficientnet_lite2", 2e-3, 0.9),
    "staged_lite2_lr1": _head_then_full("efficientnet_lite2", 1e-3, 0.8),
    "lite0_ema": _head_then_full("efficientnet_lite0", 1e-3, 0.8, ema=0.998),
    "lite1_ema": _head_then_full("efficientnet_lite1", 1e-3, 0.8, ema=0.998),
    "lite2_ema": _head_then_full("efficientnet_lite2", 1e-3, 0.8, ema=0.998),
    "lite2_ema_lr5": _head_then_full("efficientnet_lite2", 5e-4, 0.8, ema=0.998),
    "vit_ema": _head_then_full("vit_small_patch14_dinov2", 1e-4, 0.75, ema=0.998),
    "lite2_ema_mild": _head_then_full(
        "efficientnet_lite2", 1e-3, 0.8, ema=0.998,
        augmentation={"scale": [0.7, 1.0], "color_jitter": None}),
    "lite2_ema_whole": _head_then_full(
        "efficientnet_lite2", 1e-3, 0.8, ema=0.998, crop_pct=1.0,
        augmentation={"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "color_jitter": None}),
}


def run(recipe: str, data: Path, split: dict[str, Any], out: Path, epochs: int,
        seed: int) -> dict[str, Any]:
    from vitkit.classify.config import TrainConfig
    from vitkit.workflows.train import run_training

    options = {k: v for k, v in RECIPES[recipe].items()}
    config = TrainConfig(data=str(data), out=str(out), epochs=epochs, seed=seed,
                         trust=QUIET_TRUST, early_stopping=None, **split, **options)
    start = time.perf_counter()
    result = run_training(config, progress=False)
    held_out = result.test_accuracy if result.test_accuracy is not None else result.val_accuracy
    return {"recipe": recipe, "accuracy": held_out, "val": result.val_accuracy,
            "best_epoch": result.best_epoch, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="hymenoptera,textile")
    parser.add_argument("--recipes", default="today,staged")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--jsonl", default=None, help="append each result as a JSON line")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vitkit-recipe-"))
    try:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for set_name in args.sets.split(","):
                data, split = build_set(set_name, work / f"data-{seed}", seed=seed)
                for recipe in args.recipes.split(","):
                    row = run(recipe, data, split, work / f"{set_name}-{recipe}-{seed}",
                              args.epochs, seed)
                    row.update(set=set_name, seed=seed, epochs=args.epochs)
                    print(json.dumps(row), flush=True)
                    if args.jsonl:
                        with open(args.jsonl, "a") as handle:
                            handle.write(json.dumps(row) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
