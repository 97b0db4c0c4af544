"""Does DANN raise target accuracy over source-only training? Two domain shifts built here
(nothing downloaded), the same seeds, the same split, one run each:

* ``digits-textures`` (MNIST -> MNIST-M, in small): scikit-learn's handwritten digits (1,797
  8x8 images, bundled) as 32x32 white-on-black strokes are the source; the target is other
  digits blended into 32x32 crops of the DTD texture photos in ../shared/datasets
  (``|texture - strokes|`` per channel, MNIST-M's recipe). Per class, half the digits are
  source, a quarter unlabelled target, a quarter labelled target for the target accuracy.
* ``hymenoptera-gray`` (ants vs bees photos): the source is hymenoptera's train/ split; the
  target its val/ photos in grayscale, blurred (radius 2) and at 60 % contrast, half of them
  unlabelled, the other half labelled.

Each run is `vitkit train DATA --target-domain UNLABELLED --domain-adapt dann --target-eval
LABELLED --compare-source-only` (in-process): the source-only baseline is the same recipe
without the domain loss, on the same split, and both are measured on the same target images.
The shift itself is the baseline's source (val) accuracy against its target accuracy.
The model is efficientnet_lite0 (offline ImageNet weights) unless ``--model``; ``--sweep``
adds DANN runs with other knobs (no new baseline: the seed's own is reused).

Per shift and seed one JSON line; then per shift the means, DANN minus source-only and how many
seeds DANN won. Usage:

    python bench/dann_shift.py [--shifts digits-textures,hymenoptera-gray] [--seeds 0,1,2]
        [--epochs 8] [--per-class N] [--model efficientnet_lite0] [--weight 1]
        [--lambda-max 1] [--head-lr-scale 1] [--sweep weight=0.3,1;head_lr_scale=1,10]
        [--jsonl out.jsonl]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
SIZES = {"digits-textures": 64, "hymenoptera-gray": 224}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def digits_textures(root: Path, seed: int, per_class: int | None) -> dict[str, Path]:
    """source/<digit>, target/ (unlabelled), target-eval/<digit>."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    textures = [Image.open(p).convert("RGB") for p in _images(SHARED / "ood_textures_dtd")]
    rng = np.random.default_rng(seed)
    for digit in range(10):
        indices = np.flatnonzero(digits.target == digit)
        rng.shuffle(indices)
        if per_class:
            indices = indices[:per_class]
        half, three_quarters = len(indices) // 2, (3 * len(indices)) // 4
        parts = {"source": indices[:half], "target": indices[half:three_quarters],
                 "target-eval": indices[three_quarters:]}
        for part, chosen in parts.items():
            folder = root / part / (str(digit) if part != "target" else "")
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                strokes = Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8))
                strokes = strokes.resize((32, 32), Image.Resampling.BILINEAR).convert("RGB")
                image = strokes if part == "source" else _on_texture(strokes, textures, rng)
                image.save(folder / f"{digit}-{i}.png")
    return {k: root / k for k in ("source", "target", "target-eval")}


def _on_texture(strokes: Image.Image, textures: list[Image.Image],
                rng: np.random.Generator) -> Image.Image:
    texture = textures[int(rng.integers(len(textures)))]
    side = int(rng.integers(48, min(texture.size) + 1))
    x = int(rng.integers(0, texture.width - side + 1))
    y = int(rng.integers(0, texture.height - side + 1))
    crop = texture.crop((x, y, x + side, y + side)).resize((32, 32), Image.Resampling.BILINEAR)
    blended = np.abs(np.asarray(crop, np.int16) - np.asarray(strokes, np.int16))
    return Image.fromarray(blended.astype(np.uint8))


def hymenoptera_gray(root: Path, seed: int, per_class: int | None) -> dict[str, Path]:
    """source/<class> (train/ photos), target/ and target-eval/<class> (val/ photos, altered)."""
    base = SHARED / "hymenoptera"
    rng = random.Random(seed)
    for label in ("ants", "bees"):
        sources = _images(base / "train" / label)[:per_class] if per_class \
            else _images(base / "train" / label)
        (root / "source" / label).mkdir(parents=True)
        for path in sources:
            (root / "source" / label / path.name).symlink_to(path)
        photos = _images(base / "val" / label)
        rng.shuffle(photos)
        if per_class:
            photos = photos[:per_class]
        for i, path in enumerate(photos):
            folder = root / "target" if i % 2 == 0 else root / "target-eval" / label
            folder.mkdir(parents=True, exist_ok=True)
            image = ImageOps.grayscale(Image.open(path).convert("RGB")).convert("RGB")
            image = ImageEnhance.Contrast(image.filter(ImageFilter.GaussianBlur(2))).enhance(0.6)
            image.save(folder / f"{label}-{path.stem}.png")
    return {k: root / k for k in ("source", "target", "target-eval")}


BUILDERS = {"digits-textures": digits_textures, "hymenoptera-gray": hymenoptera_gray}


def train(folders: dict[str, Path], out: Path, seed: int, args: argparse.Namespace,
          knobs: dict[str, float], shift: str, compare: bool) -> dict[str, Any]:
    from vitkit.classify.config import TrainConfig
    from vitkit.workflows.train import run_training

    config = TrainConfig(
        data=str(folders["source"]), model=args.model, epochs=args.epochs, seed=seed,
        batch_size=32, num_workers=0, out=str(out),
        image_size=SIZES[shift] if args.model.startswith("efficientnet") else None,
        trust={"explain_examples": 0, "feature_map": False},
        domain={"method": "dann", "target": str(folders["target"]),
                "target_eval": str(folders["target-eval"]), "compare_source_only": compare,
                **knobs})
    record = run_training(config, progress=False).domain_adaptation
    if record is None:
        raise RuntimeError("the run recorded no domain adaptation")
    return record


def run(shift: str, seed: int, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    root = work / f"{shift}-{seed}"
    folders = BUILDERS[shift](root / "data", seed, args.per_class)
    knobs = {"weight": args.weight, "lambda_max": args.lambda_max,
             "head_lr_scale": args.head_lr_scale}
    record = train(folders, root / "default", seed, args, knobs, shift, compare=True)
    before, after = record["shift"]["before"], record["shift"]["after"]
    baseline = record["source_only"]
    rows = [{
        "shift": shift, "seed": seed, "model": args.model, "epochs": args.epochs, **knobs,
        "source_only_source_acc": baseline["source_accuracy"],
        "source_only_target_acc": baseline["target_accuracy"],
        "dann_source_acc": record["source_accuracy"],
        "dann_target_acc": record["target_accuracy"],
        "target_gain": record["target_accuracy_gain"],
        "domain_head_acc": record["domain_accuracy"],
        "probe_before": before["domain_probe_accuracy"],
        "probe_after": after["domain_probe_accuracy"],
        "ood_share_before": before["ood_share"], "ood_share_after": after["ood_share"],
        "mmd_before": before["mmd"], "mmd_after": after["mmd"],
        "target_images": record["target_images"],
        "target_eval_images": record["target_eval_images"]}]
    for i, values in enumerate(sweep_grid(args.sweep)):
        swept = train(folders, root / f"sweep-{i}", seed, args, {**knobs, **values}, shift,
                      compare=False)
        rows.append({"shift": shift, "seed": seed, "sweep": {**knobs, **values},
                     "source_only_target_acc": baseline["target_accuracy"],
                     "dann_target_acc": swept["target_accuracy"],
                     "target_gain": swept["target_accuracy"] - baseline["target_accuracy"],
                     "domain_head_acc": swept["domain_accuracy"],
                     "probe_after": swept["shift"]["after"]["domain_probe_accuracy"]})
    return rows


def sweep_grid(spec: str | None) -> list[dict[str, float]]:
    """``weight=0.3,1;head_lr_scale=1,10`` -> every combination."""
    if not spec:
        return []
    axes = [(name, [float(v) for v in values.split(",")])
            for name, values in (part.split("=") for part in spec.split(";"))]
    return [dict(zip([a for a, _ in axes], combo, strict=True))
            for combo in itertools.product(*(values for _, values in axes))]


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    main = [r for r in rows if "sweep" not in r]
    keys = [k for k, v in main[0].items() if isinstance(v, float) and k not in
            ("weight", "lambda_max", "head_lr_scale")]
    means = {k: round(statistics.mean(r[k] for r in main), 4) for k in keys}
    result: dict[str, Any] = {
        "shift": main[0]["shift"], "seeds": len(main), **means,
        "shift_drop_source_only": round(means["source_only_source_acc"]
                                        - means["source_only_target_acc"], 4),
        "dann_wins": sum(r["dann_target_acc"] > r["source_only_target_acc"] for r in main)}
    swept: dict[str, list[float]] = {}
    for r in rows:
        if "sweep" in r:
            swept.setdefault(json.dumps(r["sweep"], sort_keys=True), []).append(r["target_gain"])
    if swept:
        result["sweep_mean_gain"] = {k: round(statistics.mean(v), 4) for k, v in swept.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shifts", default="digits-textures,hymenoptera-gray")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=None,
                        help="at most this many images per class and part (a quick check)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--lambda-max", type=float, default=1.0)
    parser.add_argument("--head-lr-scale", type=float, default=1.0)
    parser.add_argument("--sweep", default=None)
    parser.add_argument("--jsonl", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for shift in args.shifts.split(","):
            rows: list[dict[str, Any]] = []
            for seed in (int(s) for s in args.seeds.split(",")):
                for row in run(shift, seed, args, Path(folder)):
                    rows.append(row)
                    emit(row, args.jsonl)
            emit(summary(rows), args.jsonl)


def emit(row: dict[str, Any], jsonl: str | None) -> None:
    print(json.dumps(row), flush=True)
    if jsonl:
        with open(jsonl, "a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
