"""Supervised segmentation against PatchCore's anomaly map, pixel F1 on the same held-out images.

For each MVTec-layout set with defect masks:

1. ``vitkit segment train`` with its defaults (U-Net on efficientnet_lite0, offline ImageNet
   weights, 256 px, 2 + 8 epochs, a seeded 20 % validation split over every image);
2. ``vitkit anomaly fit`` with its defaults (PatchCore) on the set's normal training images
   *minus* those in the segmenter's validation split, so neither model saw the images compared;
3. on the validation images (defects and normal ones alike): the segmenter's mask, and
   PatchCore's map thresholded where the fitted detector puts it (normalised map >= 0.5: the
   region its overlays outline). Also, for scale, PatchCore at the pixel threshold that would
   be best on these very masks (an oracle no user has).

Pixel F1 is pooled over the images: 2 TP / (2 TP + FP + FN) with the defect pixels positive.

Usage: python bench/segment_vs_patchcore.py [--sets PA_BDP01_TL,PA_FLR01_TL] [--jsonl F]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SETS = {"PA_BDP01_TL": SHARED / "piped_paper" / "PA_BDP01_TL",
        "PA_FLR01_TL": SHARED / "piped_paper" / "PA_FLR01_TL",
        "deeppcb": SHARED / "deeppcb"}


def pixel_f1(predicted: list[np.ndarray], truth: list[np.ndarray]) -> dict[str, float]:
    tp = sum(int((p & t).sum()) for p, t in zip(predicted, truth, strict=True))
    fp = sum(int((p & ~t).sum()) for p, t in zip(predicted, truth, strict=True))
    fn = sum(int((~p & t).sum()) for p, t in zip(predicted, truth, strict=True))
    return {"f1": 2 * tp / max(1, 2 * tp + fp + fn), "precision": tp / max(1, tp + fp),
            "recall": tp / max(1, tp + fn)}


def best_threshold_f1(maps: list[np.ndarray], truth: list[np.ndarray]) -> tuple[float, float]:
    """The highest pooled pixel F1 over thresholds (the oracle) and its threshold."""
    values = np.concatenate([m.ravel() for m in maps])
    labels = np.concatenate([t.ravel() for t in truth])
    order = np.argsort(-values, kind="stable")
    values, labels = values[order], labels[order]
    tp = np.cumsum(labels)
    fp = np.cumsum(~labels)
    positives = int(labels.sum())
    last = np.r_[values[1:] != values[:-1], True]  # thresholds between distinct values
    f1 = 2 * tp / np.maximum(1, 2 * tp + fp + (positives - tp))
    f1 = np.where(last, f1, -1)
    best = int(np.argmax(f1))
    return float(f1[best]), float(values[best])


def truth_mask(image: Path, mask: str) -> np.ndarray:
    width, height = Image.open(image).size
    if not mask:
        return np.zeros((height, width), dtype=bool)
    return np.asarray(Image.open(mask).convert("L")) > 127


def compare(name: str, data: Path, folder: Path) -> dict[str, Any]:
    from vitkit.anomaly.config import AnomalyFitConfig
    from vitkit.anomaly.detector import load_anomaly_detector
    from vitkit.segment.predict import SegmentPredictor
    from vitkit.workflows.anomaly.fit import run_fit
    from vitkit.workflows.segment import SegmentTrainConfig, run_segment_training

    started = time.perf_counter()
    run = folder / f"seg-{name}"
    trained = run_segment_training(SegmentTrainConfig(data=str(data), out=str(run)),
                                   progress=False)
    seg_seconds = time.perf_counter() - started
    with open(run / "splits.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    val = [(Path(r["image"]), r["mask"]) for r in rows if r["split"] == "val"]
    held_out = {image.resolve() for image, _ in val}

    normals = folder / f"normals-{name}"
    normals.mkdir()
    for image in sorted((data / "train" / "good").iterdir()):
        if image.resolve() not in held_out:
            (normals / image.name).symlink_to(image.resolve())
    started = time.perf_counter()
    run_fit(AnomalyFitConfig(data=str(normals), out=str(folder / f"patchcore-{name}")),
            progress=False)
    fit_seconds = time.perf_counter() - started
    detector = load_anomaly_detector(folder / f"patchcore-{name}")

    truth = [truth_mask(image, mask) for image, mask in val]
    predictor = SegmentPredictor.load(trained.bundle)
    seg_masks = [predictor.predict([Image.open(image).convert("RGB")])[0].mask > 0
                 for image, _ in val]
    maps: list[np.ndarray] = []
    for result, _ in detector.score_paths([image for image, _ in val], with_maps=True):
        maps.append(np.asarray(result.map))  # type: ignore[union-attr]
    patchcore = pixel_f1([m >= 0.5 for m in maps], truth)
    oracle_f1, oracle_threshold = best_threshold_f1(maps, truth)
    segment = pixel_f1(seg_masks, truth)
    return {"set": name, "val_images": len(val),
            "val_defect_images": sum(1 for _, mask in val if mask),
            "patchcore_normals": len(list(normals.iterdir())),
            "segment_pixel_f1": round(segment["f1"], 4),
            "segment_precision": round(segment["precision"], 4),
            "segment_recall": round(segment["recall"], 4),
            "patchcore_pixel_f1": round(patchcore["f1"], 4),
            "patchcore_precision": round(patchcore["precision"], 4),
            "patchcore_recall": round(patchcore["recall"], 4),
            "patchcore_oracle_pixel_f1": round(oracle_f1, 4),
            "patchcore_oracle_threshold": round(oracle_threshold, 4),
            "segment_dice": trained.dice, "segment_seconds": round(seg_seconds, 1),
            "patchcore_seconds": round(fit_seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="PA_BDP01_TL,PA_FLR01_TL")
    parser.add_argument("--jsonl", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for name in args.sets.split(","):
            row = compare(name, SETS[name], Path(folder))
            print(json.dumps(row), flush=True)
            if args.jsonl:
                with open(args.jsonl, "a") as handle:
                    handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
