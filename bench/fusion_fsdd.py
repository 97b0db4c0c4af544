"""Image + audio fusion on spoken digits, measured on speakers the model never heard.

Data: the Free Spoken Digit Dataset (``../shared/datasets/fsdd``: 4 speakers x 10 digits x 50
recordings, 8 kHz) paired with scikit-learn's ``load_digits`` images (8x8, 1,797 images). The
images of each digit are split once (seeded) into train / val / test pools, so no image is in
two splits; each recording is paired with a random image of its digit from its split's pool.

For each held-out speaker: train on the other three (15 % of their recordings, stratified by
digit, for validation), test on the held-out one's 500 recordings. Three models per speaker,
all with `vitkit train MANIFEST.csv`'s recipe (the library calls behind it):

- fusion: image + audio rows, modality dropout; measured with both inputs, the image alone and
  the audio alone (`vitkit eval --modality both|image|audio`);
- audio only: the same rows with the image column empty;
- image only: the same rows with the audio column empty.

Prints one JSON line per held-out speaker, then one summary line with the means over
speakers and the ratios fusion / image-alone and fusion / audio-alone.

The image backbone (``--model``, default resnet10t from scratch at 32 px) was chosen by
measurement: the same plain loop (6 epochs, AdamW 1e-3, every layer) on load_digits' images
at 32 px, 1,078 train / 449 test, gave test accuracy 0.993 for resnet10t from scratch (210 s),
0.989 for timm's tiny test_resnet from scratch (29 s) and 0.853 for efficientnet_lite0 with
its offline ImageNet weights (499 s), on a 2-core machine shared with other runs (times are
comparable only to each other). ImageNet features do not help 8x8 strokes, and depthwise
convolutions train slowly on CPUs.

Usage: python bench/fusion_fsdd.py [--speakers theo,jackson] [--epochs HEAD:FULL]
       [--per-digit N]  (recordings per speaker and digit; 50 = all)
       [--model resnet10t] [--weights none] [--image-size 32] [--out DIR] [--jsonl FILE]
       [--no-single]    (skip the audio-only and image-only models)
Smallest run (proves it works, ~2 min on 2 busy cores):
       python bench/fusion_fsdd.py --speakers theo --per-digit 6 --epochs 1:1 --no-single
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fsdd" / "recordings"
SPEAKERS = ("jackson", "nicolas", "theo", "yweweler")
NAME = re.compile(r"(\d)_([a-z]+)_(\d+)\.wav$")
POOL_SHARES = (0.6, 0.15)  # train, val share of each digit's images; the rest is test


def write_digit_images(folder: Path, seed: int) -> dict[str, dict[str, list[Path]]]:
    """``load_digits`` as 8x8 PNGs; split -> digit -> image files (disjoint pools)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    by_digit: dict[str, list[Path]] = {}
    for i, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = folder / f"{i:04d}_{target}.png"
        Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8), mode="L").save(path)
        by_digit.setdefault(str(target), []).append(path)
    pools: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}, "test": {}}
    for digit, paths in by_digit.items():
        random.Random(f"{seed}-images-{digit}").shuffle(paths)
        n_train = round(POOL_SHARES[0] * len(paths))
        n_val = round(POOL_SHARES[1] * len(paths))
        pools["train"][digit] = paths[:n_train]
        pools["val"][digit] = paths[n_train:n_train + n_val]
        pools["test"][digit] = paths[n_train + n_val:]
    return pools


def recordings(per_digit: int) -> dict[str, dict[str, list[Path]]]:
    """speaker -> digit -> its first ``per_digit`` recordings (by index)."""
    found: dict[str, dict[str, list[tuple[int, Path]]]] = {}
    for path in SHARED.glob("*.wav"):
        match = NAME.match(path.name)
        if match:
            digit, speaker, index = match.groups()
            found.setdefault(speaker, {}).setdefault(digit, []).append((int(index), path))
    return {speaker: {digit: [p for _, p in sorted(items)[:per_digit]]
                      for digit, items in digits.items()} for speaker, digits in found.items()}


def write_manifests(folder: Path, held_out: str, recs: dict[str, dict[str, list[Path]]],
                    pools: dict[str, dict[str, list[Path]]], seed: int) -> dict[str, Path]:
    """Three manifests over the same rows: both inputs, audio only, image only."""
    rng = random.Random(f"{seed}-{held_out}")
    rows: list[tuple[Path, Path, str, str]] = []
    for speaker, digits in sorted(recs.items()):
        for digit, paths in sorted(digits.items()):
            if speaker == held_out:
                splits = ["test"] * len(paths)
            else:
                n_val = max(1, round(0.15 * len(paths)))
                order = list(range(len(paths)))
                rng.shuffle(order)
                val = set(order[:n_val])
                splits = ["val" if i in val else "train" for i in range(len(paths))]
            for path, split in zip(paths, splits, strict=True):
                rows.append((rng.choice(pools[split][digit]), path, digit, split))
    folder.mkdir(parents=True, exist_ok=True)
    manifests = {}
    for kind in ("fusion", "audio", "image"):
        lines = ["image,audio,label,split"]
        for image, audio, digit, split in rows:
            lines.append(f"{image if kind != 'audio' else ''},{audio if kind != 'image' else ''},"
                         f"{digit},{split}")
        manifests[kind] = folder / f"{kind}.csv"
        manifests[kind].write_text("\n".join(lines) + "\n")
    return manifests


def train_and_test(manifest: Path, out: Path, options: dict[str, Any],
                   modalities: tuple[str, ...]) -> dict[str, Any]:
    from vitkit.workflows.fusion import (
        FusionTrainConfig,
        run_fusion_eval,
        run_fusion_training,
    )

    started = time.perf_counter()
    result = run_fusion_training(FusionTrainConfig(data=str(manifest), out=str(out), **options),
                                 progress=False)
    seconds = time.perf_counter() - started
    test = {m: run_fusion_eval(result.bundle, str(manifest), m, progress=False)["accuracy"]
            for m in modalities}
    return {"test": test, "val": result.by_modality.get("val", {}),
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "train_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", default=",".join(SPEAKERS),
                        help="held-out speakers, one run each")
    parser.add_argument("--per-digit", type=int, default=50)
    parser.add_argument("--epochs", default=None, help="HEAD:FULL (default: the recipe's)")
    # 8x8 digits: a small CNN from scratch at 32 px, chosen by measurement (see the module
    # docstring); `--model efficientnet_lite0 --weights auto` runs the recipe's default
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--jsonl", default=None)
    parser.add_argument("--no-single", action="store_true")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is not there: the FSDD recordings are needed")
    out = Path(args.out or tempfile.mkdtemp(prefix="vitkit-fusion-fsdd-"))
    options: dict[str, Any] = {"seed": args.seed}
    if args.epochs:
        head, full = (int(x) for x in args.epochs.split(":"))
        options.update(head_epochs=head, full_epochs=full)
    options.update(model=args.model, weights=args.weights, image_size=args.image_size)
    pools = write_digit_images(out / "images", args.seed)
    recs = recordings(args.per_digit)
    rows = []
    for speaker in args.speakers.split(","):
        manifests = write_manifests(out / speaker, speaker, recs, pools, args.seed)
        row: dict[str, Any] = {"held_out": speaker, "per_digit": args.per_digit, **options}
        row["fusion"] = train_and_test(manifests["fusion"], out / speaker / "fusion-run",
                                       options, ("both", "image", "audio"))
        if not args.no_single:
            row["audio_only"] = train_and_test(manifests["audio"], out / speaker / "audio-run",
                                               options, ("audio",))
            row["image_only"] = train_and_test(manifests["image"], out / speaker / "image-run",
                                               options, ("image",))
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    mean = {m: statistics.mean(r["fusion"]["test"][m] for r in rows)
            for m in ("both", "image", "audio")}
    summary: dict[str, Any] = {"summary": True, "speakers": len(rows),
                               "fusion_both": mean["both"], "fusion_image_alone": mean["image"],
                               "fusion_audio_alone": mean["audio"],
                               "both_over_image_alone": mean["both"] / max(mean["image"], 1e-9),
                               "both_over_audio_alone": mean["both"] / max(mean["audio"], 1e-9)}
    if not args.no_single:
        summary["audio_only_model"] = statistics.mean(r["audio_only"]["test"]["audio"]
                                                      for r in rows)
        summary["image_only_model"] = statistics.mean(r["image_only"]["test"]["image"]
                                                      for r in rows)
        summary["both_over_audio_only_model"] = mean["both"] / max(summary["audio_only_model"],
                                                                   1e-9)
        summary["both_over_image_only_model"] = mean["both"] / max(summary["image_only_model"],
                                                                   1e-9)
    print(json.dumps(summary), flush=True)
    print(f"run folders: {out}", flush=True)


if __name__ == "__main__":
    main()
