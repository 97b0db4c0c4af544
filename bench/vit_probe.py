"""Linear probes: how good are a backbone's frozen features for a new task?

For each backbone, the pooled features of the train and val images (the model's own evaluation
preprocessing; for ViTs the class token and the mean patch token side by side), then a
logistic regression fitted on train and scored on val, in one run:

    python bench/vit_probe.py DATA [DATA ...] [--models vit_small_patch14_dinov2,efficientnet_lite0]

DATA: a folder with train/ and val/ class folders, or class folders (split 70/30, seeded).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from vitkit.backbones import create
from vitkit.data import eval_transform, load_rgb, scan
from vitkit.data.layouts import ensure_validation_split


def features(name: str, paths: list[Path]) -> np.ndarray:
    created = create(name, num_classes=2)
    model = created.model.eval()
    transform = eval_transform(created.preprocessing)
    rows = []
    with torch.no_grad():
        for start in range(0, len(paths), 32):
            batch = torch.stack([transform(load_rgb(p)[0]) for p in paths[start:start + 32]])
            tokens = model.model.forward_features(batch)  # timm's: tokens or a feature map
            if tokens.dim() == 3:  # ViT: class token and mean patch token
                prefix = getattr(model.model, "num_prefix_tokens", 1)
                pooled = torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], dim=1)
            else:
                pooled = tokens.mean((2, 3))
            rows.append(pooled.float())
    return torch.cat(rows).numpy()


def probe(data: str, models: list[str]) -> None:
    samples = ensure_validation_split(scan(data), 0.3, seed=0)
    train = [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val"]
    labels = sorted({s.label for s in samples})
    y_train = np.array([labels.index(s.label) for s in train])
    y_val = np.array([labels.index(s.label) for s in val])
    for name in models:
        started = time.perf_counter()
        x_train = features(name, [s.path for s in train])
        x_val = features(name, [s.path for s in val])
        scaler = StandardScaler().fit(x_train)
        classifier = LogisticRegression(max_iter=5000, C=0.5).fit(scaler.transform(x_train),
                                                                  y_train)
        accuracy = float((classifier.predict(scaler.transform(x_val)) == y_val).mean())
        print(f"{Path(data).name:<16} {name:<28} probe accuracy {accuracy:.3f} "
              f"({len(train)} train / {len(val)} val, {time.perf_counter() - started:.0f} s)",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+")
    parser.add_argument("--models", default="vit_small_patch14_dinov2,efficientnet_lite0")
    args = parser.parse_args()
    for data in args.data:
        probe(data, args.models.split(","))


if __name__ == "__main__":
    main()
