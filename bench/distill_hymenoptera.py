"""Does a teacher help? The same student trained with and without distillation on hymenoptera.

1. Teacher: efficientnet_lite0 with its offline ImageNet weights, fine-tuned on hymenoptera
   (head stage only: a few seconds per epoch on cached features), or a given --teacher bundle.
2. Student, twice, from the same random initialisation (same seed, epochs, optimiser,
   schedule and augmentation): once with `vitkit train` (labels only), once with
   `vitkit distill` (soft targets from the teacher + labels).
Prints both validation accuracies (the saved bundles measured on hymenoptera/val) and the gain,
for each of ``--seeds`` (a seed sets the student's initialisation, the data order and the
augmentation; both students of a pair share it), then the mean gain and how many seeds gained.
153 validation images make one image 0.65 points, so a single pair says little; the mean
validation accuracy of the last 10 epochs ("late") is printed beside the best epoch's.

Usage: python bench/distill_hymenoptera.py [--student test_resnet] [--epochs 20] [--seeds 0,1,2]
           [--teacher BUNDLE] [--data ../shared/datasets/hymenoptera] [--out runs/bench-distill]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path
from typing import Any

from vitkit.classify.config import DistillConfig, TrainConfig
from vitkit.workflows.distill import run_distill
from vitkit.workflows.train import run_training

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera"
HEAD_ONLY = {"head": {"share": 1.0}, "top": {"share": 0.0}, "full": {"share": 0.0}}
LATE_EPOCHS = 10
# A student learning from scratch: every layer at the same rate (no layer-wise decay).
END_TO_END = {"head": {"share": 0.0}, "top": {"share": 0.0},
              "full": {"share": 1.0, "lr": 2e-3, "layer_decay": 1.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--teacher", default=None, help="reuse this teacher bundle")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--student", default="test_resnet")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--mode", default="soft")
    parser.add_argument("--feature-weight", type=float, default=0.0,
                        help="weight of the feature term (distill --feature-weight)")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--mixup", type=float, default=0.0,
                        help="mixup alpha for both students (the teacher labels each mixed image)")
    parser.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha for both students")
    parser.add_argument("--seeds", default="0", help="comma-separated; one pair of runs per seed")
    parser.add_argument("--out", default="runs/bench-distill")
    args = parser.parse_args()
    out = Path(args.out)

    started = time.perf_counter()
    teacher = args.teacher
    if teacher is None:
        teacher = run_training(TrainConfig(
            data=args.data, model="efficientnet_lite0", weights="auto",
            epochs=args.teacher_epochs, stages=HEAD_ONLY, num_workers=2, seed=0,
            out=str(out / "teacher"),
        ), progress=False).bundle
    teacher_seconds = time.perf_counter() - started

    pairs = [run_pair(args, teacher, out / f"seed{seed}", seed)
             for seed in (int(part) for part in args.seeds.split(","))]
    gains = [pair["gain"] for pair in pairs]
    summary = {
        "student": args.student, "epochs": args.epochs, "mode": args.mode,
        "temperature": args.temperature, "alpha": args.alpha, "augment": not args.no_augment,
        "mixup": args.mixup, "cutmix": args.cutmix, "feature_weight": args.feature_weight,
        "teacher_val_accuracy": pairs[0]["teacher_val_accuracy"],
        "teacher_seconds": round(teacher_seconds, 1), "pairs": pairs,
        "mean_without_teacher": statistics.fmean(p["student_without_teacher"] for p in pairs),
        "mean_with_teacher": statistics.fmean(p["student_with_teacher"] for p in pairs),
        "mean_gain": statistics.fmean(gains),
        "seeds_gained": sum(gain > 0 for gain in gains),
        "mean_late_gain": statistics.fmean(pair["late_gain"] for pair in pairs),
    }
    print(f"teacher efficientnet_lite0 val accuracy {summary['teacher_val_accuracy']:.3f}")
    print(f"mean over {len(pairs)} seed(s): no teacher {summary['mean_without_teacher']:.3f}, "
          f"distilled {summary['mean_with_teacher']:.3f}, gain {summary['mean_gain']:+.3f}; "
          f"{summary['seeds_gained']} of {len(pairs)} seeds gained; mean of the last "
          f"{LATE_EPOCHS} epochs: gain {summary['mean_late_gain']:+.3f}")
    print(json.dumps(summary))


def run_pair(args: argparse.Namespace, teacher: str | Path, out: Path, seed: int
             ) -> dict[str, Any]:
    """The student trained without and with the teacher, everything else equal."""
    common: dict[str, Any] = {
        "data": args.data, "model": args.student, "weights": "none", "epochs": args.epochs,
        "stages": END_TO_END, "early_stopping": None, "num_workers": 2, "seed": seed,
        "mixup": args.mixup, "cutmix": args.cutmix,
        # OOD, calibration, explanations: not part of the comparison, and minutes per run.
        "trust": {"ood": False, "calibrate": False, "explain_examples": 0,
                  "feature_map": False},
    }
    if args.no_augment:
        # The baseline must not augment either: the same images each epoch for both.
        common["augmentation"] = {"hflip": 0.0, "scale": (1.0, 1.0), "ratio": (1.0, 1.0),
                                  "color_jitter": None}
    started = time.perf_counter()
    plain = run_training(TrainConfig(**common, out=str(out / "plain")), progress=False)
    plain_seconds = time.perf_counter() - started
    started = time.perf_counter()
    distilled = run_distill(DistillConfig(
        **common, teacher=str(teacher), mode=args.mode, temperature=args.temperature,
        alpha=args.alpha, augment=not args.no_augment, feature_weight=args.feature_weight,
        out=str(out / "distilled"),
    ), progress=False)
    distill_seconds = time.perf_counter() - started
    plain_late, distilled_late = late_accuracy(plain.run_dir), late_accuracy(distilled.run_dir)
    pair = {
        "seed": seed, "teacher_val_accuracy": distilled.teacher["val_accuracy"],
        "student_without_teacher": plain.val_accuracy,
        "student_with_teacher": distilled.val_accuracy,
        "gain": distilled.val_accuracy - plain.val_accuracy,
        "late_without_teacher": plain_late, "late_with_teacher": distilled_late,
        "late_gain": distilled_late - plain_late,
        "seconds": {"plain": round(plain_seconds, 1), "distill": round(distill_seconds, 1)},
    }
    print(f"seed {seed}: {args.student} no teacher {plain.val_accuracy:.3f} "
          f"(late {plain_late:.3f}, {plain_seconds:.0f} s), distilled "
          f"{distilled.val_accuracy:.3f} (late {distilled_late:.3f}, {distill_seconds:.0f} s), "
          f"gain {pair['gain']:+.3f} (late {pair['late_gain']:+.3f})", flush=True)
    return pair


def late_accuracy(run_dir: str, epochs: int = LATE_EPOCHS) -> float:
    """Mean validation accuracy of the last ``epochs`` epochs: where training settled. The
    bundle's accuracy is the best epoch's, a maximum over noisy epochs (one image is 0.65
    points here), which favours whichever run happened to spike."""
    with (Path(run_dir) / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return statistics.fmean(float(row["val_acc"]) for row in rows[-epochs:])


if __name__ == "__main__":
    main()
