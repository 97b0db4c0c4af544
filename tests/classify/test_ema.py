"""The moving average of the weights: its arithmetic, its swap in and out, and a training run
that validates and keeps the average."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vitkit.classify.checkpoint import load_checkpoint
from vitkit.classify.config import TrainConfig
from vitkit.classify.ema import WeightAverage
from vitkit.workflows.train import run_training


def test_the_average_follows_the_warmed_up_decay() -> None:
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    average = WeightAverage(layer, decay=0.5)
    values = [1.0, 3.0, 5.0]
    expected = 0.0
    for n, value in enumerate(values, start=1):
        with torch.no_grad():
            layer.weight.fill_(value)
        average.update(layer)
        decay = min(0.5, (1 + n) / (10 + n))  # 2/11, 3/12, 0.5
        expected = decay * expected + (1 - decay) * value
    assert torch.allclose(average.shadow["weight"], torch.full((1, 2), expected))


def test_applied_swaps_the_average_in_and_the_weights_back() -> None:
    layer = nn.Linear(3, 2)
    average = WeightAverage(layer, decay=0.9)
    original = {k: v.clone() for k, v in layer.state_dict().items()}
    with torch.no_grad():
        layer.weight.add_(1.0)
    average.update(layer)
    trained = {k: v.clone() for k, v in layer.state_dict().items()}
    with average.applied(layer):
        assert torch.allclose(layer.weight, average.shadow["weight"])
        assert not torch.allclose(layer.weight, trained["weight"])
    for name, value in layer.state_dict().items():
        assert torch.equal(value, trained[name])
    assert not torch.equal(trained["weight"], original["weight"])


def test_training_with_an_average_validates_and_keeps_it(tiny_image_folder: Path,
                                                        tmp_path: Path) -> None:
    config = TrainConfig(data=str(tiny_image_folder), model="test_resnet", weights="none",
                         epochs=2, batch_size=8, ema=0.99, out=str(tmp_path / "run"),
                         trust={"ood": False, "calibrate": False, "explain_examples": 0,
                                "feature_map": False},
                         stages={"head": {"share": 0}, "top": {"share": 0},
                                 "full": {"share": 1}})
    result = run_training(config, progress=False)
    checkpoint = load_checkpoint(Path(result.run_dir) / "checkpoints" / "last.pt")
    assert checkpoint["ema"] is not None and checkpoint["ema"]["updates"] > 0
    shadow = checkpoint["ema"]["shadow"]
    best = load_file(str(Path(result.run_dir) / "checkpoints" / "best.safetensors"))
    raw = checkpoint["model"]
    assert result.best_epoch == 2, result  # seeded: the last epoch's average is the best
    keys = [k for k in best if best[k].dtype.is_floating_point]
    for key in keys:
        assert torch.allclose(best[key], shadow[f"model.{key}"].to(best[key].dtype))
    assert any(not torch.allclose(best[k], raw[k]) for k in keys)  # not the raw weights
    history = (Path(result.run_dir) / "metrics.csv").read_text().splitlines()
    assert len(history) == 3


def test_balanced_class_weights_follow_the_training_counts(tmp_path: Path) -> None:
    from vitkit.backbones import create
    from vitkit.classify.engine import Trainer
    from vitkit.data import ImageDataset
    from vitkit.data.layouts import Sample

    counts = {"good": 6, "defect": 2}
    samples = [Sample(tmp_path / f"{label}{i}.png", label, "train")
               for label, n in counts.items() for i in range(n)]
    index = {"defect": 0, "good": 1}
    dataset = ImageDataset(samples, index, lambda image: image)
    model = create("test_resnet", num_classes=2, weights="none").model

    def weights(mode: str) -> torch.Tensor | None:
        config = TrainConfig(data="x", model="test_resnet", class_weights=mode)
        trainer = Trainer(model, config, dataset, dataset, dataset, tmp_path / mode,
                          show_progress=False)
        return trainer._class_weights

    balanced = weights("balanced")
    assert balanced is not None
    assert torch.allclose(balanced, torch.tensor([8 / (2 * 2), 8 / (2 * 6)]))  # n / (k n_c)
    assert weights("none") is None
    even = ImageDataset(samples[:2] + samples[6:], index, lambda image: image)
    config = TrainConfig(data="x", model="test_resnet")
    assert Trainer(model, config, even, even, even, tmp_path / "even",
                   show_progress=False)._class_weights is None
