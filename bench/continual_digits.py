"""Class-incremental learning on scikit-learn's handwritten digits (1,797 8x8 images, bundled
with scikit-learn: no download): a model learns the old classes, then `--continue-from`
teaches it the new ones with rehearsal (and optionally LwF), beside naive fine-tuning and
joint retraining, all measured on held-out test images of both halves, over several seeds.

Splits: ``low-high`` (0-4 then 5-9) and ``even-odd`` (0,2,4,6,8 then 1,3,5,7,9). Each class
keeps 20 % of its images as test images (seeded). Images are written as 32x32 PNGs; the
model is efficientnet_lite0 with its offline ImageNet weights at 64 px.

Per split and seed, one JSON line: old-class and new-class test accuracy and training time
of (a) the continued model (memory ``--memory`` exemplars, replay ratio ``--replay-ratio``,
LwF with ``--distill-old``, ``--continual-epochs``), (b) naive fine-tuning (the same run
without memory or distillation), (c) joint retraining from the pretrained backbone on old +
new data with the first model's recipe (``--epochs``). Then a summary per split: the mean
of each figure, old-class accuracy of continual minus joint (goal: within 3 points, naive
visibly below), and continual time / joint time (goal <= 0.5 at old-class accuracy within 2
points).

Usage: python bench/continual_digits.py [--splits low-high,even-odd] [--seeds 0,1,2]
       [--epochs 6] [--continual-epochs 3] [--memory 200] [--replay-ratio 0.3]
       [--distill-old] [--jsonl out.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SPLITS = {"low-high": ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9]),
          "even-odd": ([0, 2, 4, 6, 8], [1, 3, 5, 7, 9])}
MODEL, IMAGE_SIZE = "efficientnet_lite0", 64


def write_digits(root: Path, seed: int) -> None:
    """``root/{train,test}/<digit>/<i>.png``, 20 % of each class in test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    for digit in range(10):
        indices = np.flatnonzero(digits.target == digit)
        rng.shuffle(indices)
        n_test = round(0.2 * len(indices))
        for split, chosen in (("test", indices[:n_test]), ("train", indices[n_test:])):
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
                Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR).convert(
                    "RGB").save(folder / f"{i}.png")


def subset(root: Path, split: str, classes: list[int], target: Path) -> Path:
    """A folder with only ``classes`` of ``root/split`` (symlinks)."""
    for digit in classes:
        (target / str(digit)).mkdir(parents=True, exist_ok=True)
        for image in (root / split / str(digit)).iterdir():
            (target / str(digit) / image.name).symlink_to(image)
    return target


def accuracy(bundle: str, folder: Path) -> float:
    from vitkit.data import ensure_validation_split, scan, validate_samples
    from vitkit.evaluate.classification import evaluate_samples
    from vitkit.predictor.predict import load

    samples = validate_samples(ensure_validation_split(scan(folder), 0.5, 0), progress=False)
    evaluation = evaluate_samples(load(bundle), samples.usable, 64, 0, progress=False)
    return round(float(evaluation.metrics.accuracy), 4)


def run(split: str, seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from vitkit.classify.config import ContinualConfig, TrainConfig
    from vitkit.workflows.continual import run_continual_training
    from vitkit.workflows.train import run_training

    old, new = SPLITS[split]
    root = work / f"{split}-{seed}"
    write_digits(root / "digits", seed)
    folders = {name: subset(root / "digits", part, classes, root / name)
               for name, part, classes in (("old_train", "train", old),
                                           ("new_train", "train", new),
                                           ("old_test", "test", old),
                                           ("new_test", "test", new))}
    joint_train = root / "joint_train"
    subset(root / "digits", "train", old + new, joint_train)
    common: dict[str, Any] = {"model": MODEL, "image_size": IMAGE_SIZE, "seed": seed,
                              "batch_size": 32, "num_workers": 0,
                              "trust": {"ood": False, "calibrate": False,
                                        "feature_map": False}}
    first = run_training(TrainConfig(data=str(folders["old_train"]), epochs=args.epochs,
                                     memory=args.memory, out=str(root / "first"), **common),
                         progress=False)
    continued = run_continual_training(TrainConfig(
        data=str(folders["new_train"]), epochs=args.continual_epochs, memory=args.memory,
        out=str(root / "continued"), continual=ContinualConfig(
            continue_from=first.bundle, replay_ratio=args.replay_ratio,
            distill_old=args.distill_old, old_eval=str(folders["old_test"]),
            compare_naive=True), **common), progress=False)
    started = time.perf_counter()
    joint = run_training(TrainConfig(data=str(joint_train), epochs=args.epochs,
                                     out=str(root / "joint"), **common), progress=False)
    joint_seconds = time.perf_counter() - started
    figures = continued.continual["figures"]
    row = {"split": split, "seed": seed, "memory": args.memory,
           "replay_ratio": args.replay_ratio, "distill_old": args.distill_old,
           "old_before": figures["ours"].get("old_accuracy_before"),
           "continual_old": figures["ours"].get("old_accuracy"),
           "continual_new": accuracy(continued.bundle, folders["new_test"]),
           "continual_seconds": figures["ours"]["train_seconds"],
           "naive_old": figures["naive"].get("old_accuracy"),
           "naive_new": figures["naive"].get("new_accuracy"),
           "naive_seconds": figures["naive"]["train_seconds"],
           "joint_old": accuracy(joint.bundle, folders["old_test"]),
           "joint_new": accuracy(joint.bundle, folders["new_test"]),
           "joint_seconds": round(joint_seconds, 1)}
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    mean = {k: round(statistics.mean(r[k] for r in rows), 4) for k in rows[0]
            if isinstance(rows[0][k], float)}
    return {"split": rows[0]["split"], "seeds": len(rows), **mean,
            "continual_minus_joint_old": round(mean["continual_old"] - mean["joint_old"], 4),
            "naive_minus_joint_old": round(mean["naive_old"] - mean["joint_old"], 4),
            "time_ratio_continual_to_joint": round(
                mean["continual_seconds"] / mean["joint_seconds"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", default="low-high,even-odd")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--continual-epochs", type=int, default=3)
    parser.add_argument("--memory", type=int, default=200)
    parser.add_argument("--replay-ratio", type=float, default=0.3)
    parser.add_argument("--distill-old", action="store_true")
    parser.add_argument("--jsonl", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for split in args.splits.split(","):
            rows = []
            for seed in (int(s) for s in args.seeds.split(",")):
                rows.append(run(split, seed, args, Path(folder)))
                emit(rows[-1], args.jsonl)
            emit(summary(rows), args.jsonl)


def emit(row: dict[str, Any], jsonl: str | None) -> None:
    print(json.dumps(row), flush=True)
    if jsonl:
        with open(jsonl, "a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
