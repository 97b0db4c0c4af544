"""Segmentation and detection with vitkit's defaults on real defect sets, none tuned on.

For each MVTec-layout set (masks of real defects): ``vitkit segment train`` with its
defaults (U-Net on efficientnet_lite0 with the offline ImageNet weights, 256 px, 2 + 8 epochs)
and ``vitkit detect train`` with its defaults (FCOS on efficientnet_lite0 + FPN, 320 px, boxes
from the masks' connected regions), both on a seeded split. Prints one JSON line per set and
task: Dice / IoU on the held-out validation pairs (segment), mAP@0.5 and mAP@0.5:0.95 on a
held-out test share (detect), the training time and images/s on this machine.

The defaults were chosen before these sets were looked at (on generated squares); the figures
are what a user gets on a first run.

Usage: python bench/tasks_real.py [--sets deeppcb,PA_BDP01_TL] [--jsonl out.jsonl]
       [--epochs HEAD:FULL] [--seg-archs unet,fpn] [--det-archs fcos,retinanet]
       [--weights auto,none]   (offline ImageNet weights vs random initialisation)
       [--keep DIR]   (keep the run folders and bundles there, e.g. for `vitkit bench`)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SETS = {"deeppcb": SHARED / "deeppcb",
        "PA_BDP01_TL": SHARED / "piped_paper" / "PA_BDP01_TL",
        "PA_FLR01_TL": SHARED / "piped_paper" / "PA_FLR01_TL"}


def emit(row: dict[str, Any], jsonl: str | None) -> None:
    print(json.dumps(row), flush=True)
    if jsonl:
        with open(jsonl, "a") as handle:
            handle.write(json.dumps(row) + "\n")


def segment(name: str, data: Path, out: Path, epochs: tuple[int, int] | None, arch: str,
            weights: str) -> dict[str, Any]:
    from vitkit.workflows.segment import SegmentTrainConfig, run_segment_training

    options: dict[str, Any] = {"data": str(data), "out": str(out / f"seg-{name}-{arch}-{weights}"),
                               "arch": arch, "weights": weights}
    if epochs:
        options.update(head_epochs=epochs[0], full_epochs=epochs[1])
    started = time.perf_counter()
    result = run_segment_training(SegmentTrainConfig(**options), progress=False)
    return {"set": name, "task": "segment", "arch": arch, "weights": weights,
            "dice": result.dice, "iou": result.iou,
            "val_images": result.val_images, "train_images": result.train_images,
            "epochs_run": result.epochs_run, "seconds": round(time.perf_counter() - started, 1)}


def detect(name: str, data: Path, out: Path, epochs: tuple[int, int] | None, arch: str,
           weights: str) -> dict[str, Any]:
    from vitkit.workflows.detect import DetectTrainConfig, run_detect_train

    options: dict[str, Any] = {"data": str(data), "out": str(out / f"det-{name}-{arch}-{weights}"),
                               "test_fraction": 0.2, "arch": arch, "weights": weights}
    if epochs:
        options.update(head_epochs=epochs[0], full_epochs=epochs[1])
    started = time.perf_counter()
    result = run_detect_train(DetectTrainConfig(**options), progress=False)
    return {"set": name, "task": "detect", "arch": arch, "weights": weights,
            "val_map_50": result.map_50,
            "val_map_50_95": result.map_50_95, "test_map_50": result.test_map_50,
            "val_images": result.val_images, "train_images": result.train_images,
            "epochs_run": result.epochs_run, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="deeppcb,PA_BDP01_TL")
    parser.add_argument("--tasks", default="segment,detect")
    parser.add_argument("--epochs", default=None, help="HEAD:FULL (default: the CLI's)")
    parser.add_argument("--seg-archs", default="unet")
    parser.add_argument("--det-archs", default="fcos")
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--jsonl", default=None)
    parser.add_argument("--keep", default=None, help="folder for the runs (default: deleted)")
    args = parser.parse_args()
    epochs = tuple(int(x) for x in args.epochs.split(":")) if args.epochs else None
    with contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(
            ) as folder:
        for name in args.sets.split(","):
            for task in args.tasks.split(","):
                run = segment if task == "segment" else detect
                archs = args.seg_archs if task == "segment" else args.det_archs
                for arch in archs.split(","):
                    for weights in args.weights.split(","):
                        emit(run(name, SETS[name], Path(folder), epochs,  # type: ignore[arg-type]
                                 arch, weights), args.jsonl)


if __name__ == "__main__":
    main()
