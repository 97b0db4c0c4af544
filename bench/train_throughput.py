"""Training throughput, measured as ratios within one run (this machine is shared and noisy).

1. Head-only stage: vitkit caches the frozen backbone's features once; the naive way re-runs
   the backbone every epoch. Ratio = naive time / vitkit time for the same number of epochs.
2. Full fine-tuning: vitkit's training loop (Accelerate, AdamW groups, clipping, schedule,
   checkpoints) vs a plain timm loop, same model, batch and tensors. Ratio = vitkit img/s /
   plain img/s (goal >= 1.0).

Usage: python bench/train_throughput.py [--model efficientnet_lite0] [--images 96] [--epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vitkit.backbones import create
from vitkit.classify.config import TrainConfig
from vitkit.classify.engine import Trainer
from vitkit.classify.features import extract_features


class RandomImages(Dataset):
    """Fixed random tensors: measures the training machinery, not JPEG decoding."""

    def __init__(self, n: int, size: int, classes: int = 2) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, size, size, generator=gen)
        self.y = torch.randint(0, classes, (n,), generator=gen)
        self.class_to_idx = {str(i): i for i in range(classes)}

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def head_stage(model_name: str, data: RandomImages, epochs: int, batch: int) -> tuple[float, float]:
    model = create(model_name, 2, weights="none").model.eval()
    loader = DataLoader(data, batch_size=batch)
    head = model.head

    def train_head(feats: torch.Tensor, labels: torch.Tensor) -> None:
        opt = torch.optim.AdamW(head.parameters(), 1e-3)
        for i in range(0, len(labels), 16):
            loss = F.cross_entropy(head(feats[i:i + 16]), labels[i:i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()

    start = time.perf_counter()
    feats, labels = extract_features(model, loader, torch.device("cpu"))
    for _ in range(epochs):
        train_head(feats, labels)
    cached = time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(epochs):
        feats, labels = extract_features(model, loader, torch.device("cpu"))
        train_head(feats, labels)
    naive = time.perf_counter() - start
    return cached, naive


def plain_timm_loop(model_name: str, data: RandomImages, batch: int) -> float:
    model = timm.create_model(model_name, num_classes=2).train()
    opt = torch.optim.AdamW(model.parameters(), 5e-4, weight_decay=0.05)
    loader = DataLoader(data, batch_size=batch, shuffle=True)
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def vitkit_loop(model_name: str, data: RandomImages, batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            model=model_name, weights="none", epochs=1, batch_size=batch, num_workers=0,
            stages={"head": {"share": 0}, "top": {"share": 0}, "full": {"share": 1}},
            out=tmp,
        )
        created = create(model_name, 2, weights="none")
        trainer = Trainer(created.model, config, data, data, RandomImages(batch, data.x.shape[-1]),
                          Path(tmp), show_progress=False)
        result = trainer.fit()
    return result.history[-1].images_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = RandomImages(args.images, args.size)
    print(f"model {args.model}, {args.images} images at {args.size}px, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")

    cached, naive = head_stage(args.model, data, args.epochs, args.batch)
    print(f"head-only stage, {args.epochs} epochs: cached features {cached:.1f}s, "
          f"backbone every epoch {naive:.1f}s -> {naive / cached:.2f}x faster")

    # Alternate the two loops so that noise from other work on the machine hits both.
    plain, ours = [], []
    for _ in range(2):
        plain.append(plain_timm_loop(args.model, data, args.batch))
        ours.append(vitkit_loop(args.model, data, args.batch))
    print(f"full fine-tuning: plain timm loop {max(plain):.1f} img/s, vitkit {max(ours):.1f} "
          f"img/s -> ratio {max(ours) / max(plain):.2f} (goal >= 1.0)")


if __name__ == "__main__":
    main()
