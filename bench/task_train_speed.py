"""Training images/s of vitkit's staged loop against a plain training loop, for segmentation
and detection, as ratios measured in one run (this machine is shared and noisy).

Both sides train the same model (vitkit's builders: U-Net on efficientnet_lite0, FCOS on
efficientnet_lite0 + FPN, both from the offline ImageNet weights) from the same initial
weights, on the same in-memory tensors (random images with one square object: the machinery
is measured, not image decoding), with the same batch, threads and full-stage optimiser
(AdamW, everything training):

* vitkit: :class:`vitkit.tasks.trainer.StagedTrainer` with its task step (Accelerate,
  parameter groups, warm-up + cosine, clipping, a checkpoint and a validation pass per epoch;
  only the training part of each epoch is timed, as the loop's own ``images_per_s``);
* plain: what an smp / torchvision tutorial writes (``loss = DiceLoss + CE`` or
  ``sum(model(images, targets).values())``, ``backward``, ``step``).

The two alternate, ``--rounds`` times; the first epoch of each run is a warm-up and is dropped.
The figure is the median vitkit rate over the median plain rate (goal >= 1.0).

Usage: python bench/task_train_speed.py [--tasks segment,detect] [--images 32] [--batch 8]
       [--epochs 3] [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vitkit.data.boxes import collate_detection
from vitkit.tasks.trainer import StagedConfig, StagedTrainer


class Squares(Dataset):
    """``n`` random images of ``size`` px, each with one bright square: its mask (segment) or
    its box (detect)."""

    def __init__(self, n: int, size: int, task: str) -> None:
        generator = torch.Generator().manual_seed(0)
        self.task = task
        self.images = torch.rand(n, 3, size, size, generator=generator) * 0.3
        self.masks = torch.zeros(n, size, size, dtype=torch.long)
        self.boxes = []
        for i in range(n):
            side = int(torch.randint(size // 8, size // 3, (1,), generator=generator))
            x, y = (int(v) for v in torch.randint(0, size - side, (2,), generator=generator))
            self.images[i, :, y:y + side, x:x + side] += 0.6
            self.masks[i, y:y + side, x:x + side] = 1
            self.boxes.append(torch.tensor([[x, y, x + side, y + side]], dtype=torch.float32))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Any:
        if self.task == "segment":
            return self.images[index], self.masks[index]
        return self.images[index], {"boxes": self.boxes[index],
                                    "labels": torch.zeros(1, dtype=torch.long)}


def build(task: str, size: int) -> tuple[nn.Module, Any, Callable[..., Any] | None]:
    """The model, vitkit's task step and the loader's collate function."""
    if task == "segment":
        from vitkit.segment.model import build_segmenter
        from vitkit.tasks.segment import SegmentStep

        model, _ = build_segmenter("unet", "tu-efficientnet_lite0", 2, size, "auto")
        return model, SegmentStep(["background", "square"]), None
    from vitkit.detect.model import DetectRecord, build_detector
    from vitkit.tasks.detect import DetectStep

    record = DetectRecord(arch="fcos", backbone="efficientnet_lite0", classes=["square"],
                          min_size=size, max_size=size)
    model, _ = build_detector(record, "auto")
    return model, DetectStep(["square"], 0), collate_detection


def plain_epochs(task: str, model: nn.Module, loader: DataLoader, epochs: int, lr: float
                 ) -> list[float]:
    """The tutorial loop; images/s of each epoch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    if task == "segment":
        from segmentation_models_pytorch.losses import DiceLoss

        dice = DiceLoss(mode="multiclass", from_logits=True)
    rates = []
    model.train()
    for _ in range(epochs):
        images_seen, start = 0, time.perf_counter()
        for images, targets in loader:
            if task == "segment":
                logits = model(images)
                loss = 0.5 * dice(logits, targets) + 0.5 * F.cross_entropy(logits, targets)
            else:
                loss = sum(model(list(images), list(targets)).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images_seen += len(images)
        rates.append(images_seen / (time.perf_counter() - start))
    return rates


def vitkit_epochs(model: nn.Module, step: Any, loader: Callable[[int], DataLoader],
                  val: DataLoader, epochs: int, batch: int, lr: float) -> list[float]:
    """vitkit's loop, full stage only (the plain loop has no frozen stage); images/s of each
    epoch's training part."""
    config = StagedConfig(head_epochs=0, full_epochs=epochs, batch_size=batch, lr=lr,
                          encoder_lr_scale=1.0, patience=None, device="cpu")
    with tempfile.TemporaryDirectory() as run_dir:
        result = StagedTrainer(model, step, config, loader, val, Path(run_dir),
                               show_progress=False).fit()
    return [row.images_per_s for row in result.history]


def measure(task: str, n_images: int, size: int, batch: int, epochs: int, rounds: int,
            lr: float) -> dict[str, Any]:
    data = Squares(n_images, size, task)
    model, step, collate = build(task, size)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    val = DataLoader(Squares(batch, size, task), batch_size=batch, collate_fn=collate)

    def loader(seed: int) -> DataLoader:
        return DataLoader(data, batch_size=batch, shuffle=True, collate_fn=collate,
                          generator=torch.Generator().manual_seed(seed))

    ours: list[float] = []
    plain: list[float] = []
    for _ in range(rounds):
        model.load_state_dict(initial)
        ours += vitkit_epochs(model, step, loader, val, epochs, batch, lr)[1:]
        model.load_state_dict(initial)
        plain += plain_epochs(task, model, loader(0), epochs, lr)[1:]
    return {"task": task, "size": size, "batch": batch, "images": n_images,
            "threads": torch.get_num_threads(),
            "vitkit_img_s": round(statistics.median(ours), 2),
            "plain_img_s": round(statistics.median(plain), 2),
            "ratio": round(statistics.median(ours) / statistics.median(plain), 3),
            "epochs_timed": len(ours)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="segment,detect")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seg-size", type=int, default=256)
    parser.add_argument("--det-size", type=int, default=320)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for task in args.tasks.split(","):
        size = args.seg_size if task == "segment" else args.det_size
        print(json.dumps(measure(task, args.images, size, args.batch, args.epochs,
                                 args.rounds, lr=1e-3)), flush=True)


if __name__ == "__main__":
    main()
