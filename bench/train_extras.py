"""Training extras, measured as ratios within one run (this machine is shared and noisy).

(a) Gradient checkpointing (``--grad-checkpointing``): peak memory and training time per
    epoch, on vs off. Same model, batch, images, thread count and recipe (one ``full`` stage
    through vitkit's Trainer, ``num_workers`` 0 so every byte is in one process); each setting
    runs in a fresh subprocess, alternating off/on ``--repeats`` times.

    How memory is measured: the peak resident set size of the process (``getrusage``
    ``ru_maxrss``, KiB on Linux), read just before training (Python, torch, the model, the
    optimizer-free setup) and after it. ``tracemalloc`` would be wrong: it sees only Python's
    allocator, not torch's tensors; torch keeps no peak statistics for CPU memory (its
    allocator stats are CUDA's). A fresh process per setting, because ``ru_maxrss`` is a
    high-water mark that never goes down: one setting's peak would hide the other's. The
    goal (peak memory <= 0.6x at <= 1.4x time) is judged on the *training increment*, the
    peak minus the pre-training level (activations, gradients, AdamW state, the EMA copy);
    the whole-process peak ratio is printed too, diluted by what both settings share.

(b) Progressive resizing (``--progressive START:END``): the same recipe (vitkit's defaults:
    one head epoch on cached features, then the full stage) trained at the fixed size and
    progressively, on real data with offline pretrained weights. Time is the training loops'
    own time, summed epoch by epoch (``metrics.csv`` ``seconds``: data loading included;
    validation and the head stage's feature caching excluded, the same work in both runs).
    Ratio = progressive time to reach the fixed run's best validation accuracy / the fixed
    run's time to its best (goal <= 0.8); "not reached" when it never does.

Smallest configuration (a minute or two; proves the script works, the figures mean little):

    .venv/bin/python bench/train_extras.py --images 16 --epochs 3 --repeats 1 \\
        --memory-model test_vit --memory-size 160 --progressive-model test_efficientnet \\
        --weights none --progressive 96:160

Full measurement (hymenoptera, deit_tiny and efficientnet_lite0 for memory, offline
efficientnet_lite0 for progressive resizing; about 15 minutes on 2 idle cores):

    .venv/bin/python bench/train_extras.py --memory-model deit_tiny_patch16_224 \\
        --memory-model efficientnet_lite0 --batch-size 32 --repeats 2 \\
        --progressive-model efficientnet_lite0 --progressive 128:224 --epochs 8
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DATA = Path("/work/shared/datasets/hymenoptera")
NO_TRUST = {"ood": False, "calibrate": False, "explain_examples": 0, "feature_map": False}
FULL_ONLY = {"head": {"share": 0.0}, "top": {"share": 0.0}, "full": {"share": 1.0}}


def subset_manifest(data: Path, per_class: int | None, out: Path) -> Path:
    """A manifest of ``data``'s train/val images, ``per_class`` training images per class
    (sorted names: the same subset every run); val is kept whole unless ``per_class`` is
    small, then it gets as many."""
    rows = []
    for split in ("train", "val"):
        for folder in sorted(p for p in (data / split).iterdir() if p.is_dir()):
            files = sorted(folder.glob("*.jp*g"))
            keep = per_class if split == "train" else (per_class if per_class and
                                                       per_class < 32 else None)
            rows += [(str(f), folder.name, split) for f in files[:keep]]
    with out.open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label", "split"), *rows])
    return out


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ------------------------------------------------------------------ (a) one setting, in a child
def child(args: argparse.Namespace) -> None:
    import torch

    from vitkit.backbones import create
    from vitkit.classify.config import TrainConfig
    from vitkit.classify.engine import Trainer
    from vitkit.data import ImageDataset, eval_transform, scan, train_transform
    from vitkit.data.layouts import ensure_validation_split
    from vitkit.workflows.train import input_preprocessing

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            data=str(args.manifest), model=args.model, weights="none", epochs=args.epochs,
            batch_size=args.batch_size, num_workers=0, stages=FULL_ONLY, early_stopping=None,
            grad_checkpointing=args.checkpointing, image_size=args.size, out=tmp,
            trust=NO_TRUST)
        samples = ensure_validation_split(scan(config.data), config.val_fraction, config.seed)
        classes = sorted({s.label for s in samples})
        index = {c: i for i, c in enumerate(classes)}
        created = create(config.model, num_classes=len(classes), weights="none")
        pre = input_preprocessing(created, config)
        split = {name: [s for s in samples if s.split == name] for name in ("train", "val")}
        trainer = Trainer(
            created.model, config,
            train_set=ImageDataset(split["train"], index,
                                   train_transform(pre, config.augmentation)),
            train_eval_set=ImageDataset(split["train"], index, eval_transform(pre)),
            val_set=ImageDataset(split["val"], index, eval_transform(pre)),
            run_dir=Path(tmp), show_progress=False)
        before = peak_kib()
        fit = trainer.fit()
        after = peak_kib()
    print(json.dumps({"before_kib": before, "peak_kib": after,
                      "epoch_seconds": [r.seconds for r in fit.history],
                      "images": len(split["train"]), "size": pre.input_size[0]}))


def run_child(args: argparse.Namespace, model: str, checkpointing: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--manifest", str(args.manifest),
           "--model", model, "--epochs", str(args.memory_epochs),
           "--batch-size", str(args.batch_size),
           "--threads", str(args.threads)]
    if args.memory_size:
        cmd += ["--size", str(args.memory_size)]
    if checkpointing:
        cmd.append("--checkpointing")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_part(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for model in args.memory_model:
        runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for _ in range(args.repeats):
            for flag in (False, True):
                runs[flag].append(run_child(args, model, flag))
        figures = {}
        for flag, rows in runs.items():
            # The first epoch of each process warms oneDNN's caches: skip it when there are more.
            seconds = [s for r in rows for s in (r["epoch_seconds"][1:] or r["epoch_seconds"])]
            figures[flag] = {
                "peak_mib": statistics.median(r["peak_kib"] for r in rows) / 1024,
                "increment_mib": statistics.median(r["peak_kib"] - r["before_kib"]
                                                   for r in rows) / 1024,
                "epoch_s": statistics.median(seconds),
            }
        off, on = figures[False], figures[True]
        row = {
            "model": model, "images": runs[False][0]["images"], "size": runs[False][0]["size"],
            "batch": args.batch_size, "threads": args.threads,
            "off": off, "on": on,
            "increment_ratio": on["increment_mib"] / max(off["increment_mib"], 1e-9),
            "peak_ratio": on["peak_mib"] / off["peak_mib"],
            "time_ratio": on["epoch_s"] / off["epoch_s"],
        }
        results.append(row)
        print(f"\n(a) gradient checkpointing, {model} at {row['size']} px, batch "
              f"{args.batch_size}, {row['images']} images, {args.threads} threads, "
              f"{args.repeats} process(es) each")
        print(f"{'':>8} {'peak MiB':>9} {'training MiB':>13} {'s/epoch':>8}")
        for name, f in (("off", off), ("on", on)):
            print(f"{name:>8} {f['peak_mib']:9.0f} {f['increment_mib']:13.0f} {f['epoch_s']:8.2f}")
        verdict = "meets" if row["increment_ratio"] <= 0.6 and row["time_ratio"] <= 1.4 \
            else "misses"
        print(f"ratios on/off: training memory {row['increment_ratio']:.2f}x (whole process "
              f"{row['peak_ratio']:.2f}x), time {row['time_ratio']:.2f}x — {verdict} the goal "
              "(<= 0.6x memory at <= 1.4x time)")
    return results


# ------------------------------------------------------------------ (b) progressive resizing
def train_run(args: argparse.Namespace, out: Path, progressive: str | None) -> list[dict]:
    from vitkit.classify.config import TrainConfig
    from vitkit.workflows.train import run_training

    config = TrainConfig(data=str(args.manifest), model=args.progressive_model,
                         weights=args.weights, epochs=args.epochs, batch_size=args.batch_size,
                         progressive=progressive, out=str(out), trust=NO_TRUST,
                         early_stopping=None, seed=args.seed)
    run_training(config, progress=False)
    with (out / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def time_to(rows: list[dict], target: float) -> tuple[float | None, int | None]:
    """Training seconds up to the first epoch with val_acc >= target, and that epoch."""
    elapsed = 0.0
    for row in rows:
        elapsed += float(row["seconds"])
        if float(row["val_acc"]) >= target - 1e-9:
            return elapsed, int(row["epoch"])
    return None, None


def progressive_part(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    fixed = train_run(args, work / "fixed", None)
    resized = train_run(args, work / "progressive", args.progressive)
    best = max(float(r["val_acc"]) for r in fixed)
    fixed_time, fixed_epoch = time_to(fixed, best)
    prog_time, prog_epoch = time_to(resized, best)
    total = (sum(float(r["seconds"]) for r in resized)
             / sum(float(r["seconds"]) for r in fixed))
    result = {
        "model": args.progressive_model, "epochs": args.epochs, "progressive": args.progressive,
        "fixed_best": best, "fixed_time_to_best": fixed_time, "fixed_best_epoch": fixed_epoch,
        "progressive_best": max(float(r["val_acc"]) for r in resized),
        "progressive_time_to_target": prog_time, "progressive_epoch": prog_epoch,
        "time_ratio": None if prog_time is None or not fixed_time else prog_time / fixed_time,
        "total_training_time_ratio": total,
        "sizes": [r.get("image_size") for r in resized],
    }
    print(f"\n(b) progressive resizing {args.progressive}, {args.progressive_model} "
          f"({args.weights} weights), {args.epochs} epochs, batch {args.batch_size}")
    print(f"{'epoch':>5} {'fixed acc':>9} {'fixed s':>8} {'prog size':>9} {'prog acc':>8} "
          f"{'prog s':>7}")
    for a, b in zip(fixed, resized, strict=True):
        print(f"{a['epoch']:>5} {float(a['val_acc']):9.3f} {float(a['seconds']):8.1f} "
              f"{b.get('image_size', ''):>9} {float(b['val_acc']):8.3f} {float(b['seconds']):7.1f}")
    if result["time_ratio"] is None:
        print(f"progressive never reached the fixed run's best {best:.3f} (its best: "
              f"{result['progressive_best']:.3f}); training time all epochs {total:.2f}x")
    else:
        verdict = "meets" if result["time_ratio"] <= 0.8 else "misses"
        print(f"time to the fixed run's best ({best:.3f}): {prog_time:.1f} s (epoch "
              f"{prog_epoch}) vs {fixed_time:.1f} s (epoch {fixed_epoch}) = "
              f"{result['time_ratio']:.2f}x — {verdict} the goal (<= 0.8x); all epochs "
              f"{total:.2f}x")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--images", type=int, default=None,
                        help="training images per class (default: all)")
    parser.add_argument("--memory-model", action="append", default=None)
    parser.add_argument("--memory-size", type=int, default=None,
                        help="input size of the memory runs (default: the model's)")
    parser.add_argument("--progressive-model", default="efficientnet_lite0")
    parser.add_argument("--weights", default="auto", help="of the progressive runs")
    parser.add_argument("--progressive", default="128:224")
    parser.add_argument("--epochs", type=int, default=8, help="of the progressive runs")
    parser.add_argument("--memory-epochs", type=int, default=2,
                        help="full-stage epochs per memory process (the first warms up)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--part", choices=("memory", "progressive", "both"), default="both")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    # the child process of (a)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not args.data.is_dir():
        raise SystemExit(f"no data at {args.data}: pass --data (a train/ val/ folder)")
    args.memory_model = args.memory_model or ["deit_tiny_patch16_224", "efficientnet_lite0"]
    started = time.perf_counter()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        args.manifest = subset_manifest(args.data, args.images, Path(tmp) / "data.csv")
        if args.part in ("memory", "both"):
            figures["grad_checkpointing"] = memory_part(args)
        if args.part in ("progressive", "both"):
            figures["progressive"] = progressive_part(args, Path(tmp))
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
