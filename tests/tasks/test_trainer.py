"""The dense tasks' staged loop: it learns, freezes the encoder in the head stage, keeps the
best weights, stops early, and resumes a killed run to the very same weights."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vitkit.errors import ConfigError
from vitkit.tasks.trainer import Evaluation, StagedConfig, StagedTrainer


class TinySegmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class PixelStep:
    """Bright pixels are class 1: a task a 3x3 convolution learns in a few epochs."""

    metric_name = "pixel_accuracy"

    def encoder_parameters(self, model: nn.Module) -> Sequence[nn.Parameter]:
        return list(model.encoder.parameters())

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device
                      ) -> tuple[torch.Tensor, int]:
        images, masks = batch
        return F.cross_entropy(model(images.to(device)), masks.to(device)), len(images)

    def evaluate(self, model: nn.Module, batches: Iterable[Any], device: torch.device,
                 step: Callable[[], None] | None = None) -> Evaluation:
        right = total = 0
        loss = 0.0
        for images, masks in batches:
            logits = model(images.to(device))
            loss += float(F.cross_entropy(logits, masks, reduction="sum"))
            right += int((logits.argmax(1) == masks).sum())
            total += masks.numel()
        return Evaluation(metric=right / total, loss=loss / total)


def _data(seed: int, n: int = 64) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 8, 8, generator=generator)
    return TensorDataset(images, (images[:, 0] > 0.5).long())


def _trainer(run_dir: Path, **options: Any) -> StagedTrainer:
    train, val = _data(1), _data(2)

    def loader(seed: int) -> DataLoader:
        return DataLoader(train, batch_size=4, shuffle=True,
                          generator=torch.Generator().manual_seed(seed))

    config = StagedConfig(**{"head_epochs": 1, "full_epochs": 3, "lr": 0.05, "device": "cpu",
                             "patience": None, **options})
    return StagedTrainer(TinySegmenter(), PixelStep(), config, loader,
                         DataLoader(val, batch_size=8), run_dir, show_progress=False)


def test_it_learns_and_keeps_the_best_weights(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    encoder_before = [p.detach().clone() for p in trainer.model.encoder.parameters()]
    result = trainer.fit()
    assert [row.stage for row in result.history] == ["head", "full", "full", "full"]
    assert result.best_metric == max(row.metric for row in result.history) > 0.8
    assert result.history[-1].metric > result.history[0].metric + 0.2
    best = load_file(str(result.best_weights))
    assert set(best) == set(trainer.model.state_dict())
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,stage,lr") and len(rows) == 5
    assert any(not torch.equal(a, b) for a, b in
               zip(encoder_before, trainer.model.encoder.parameters(), strict=True))


def test_the_head_stage_leaves_the_encoder_and_its_statistics_alone(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, full_epochs=0)
    before = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    trainer.fit()
    after = trainer.model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BN running stats


def test_a_killed_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    whole = _trainer(tmp_path / "whole")
    whole.fit()
    first = _trainer(tmp_path / "killed")
    original = first._run_epoch
    calls = {"n": 0}

    def dies_after_two(*args: Any, **kwargs: Any) -> Any:  # killed in the third epoch
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(*args, **kwargs)

    first._run_epoch = dies_after_two  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    resumed = _trainer(tmp_path / "killed")
    result = resumed.fit(resume=True)
    assert result.epochs_run == 4
    for (name, a), b in zip(whole.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_early_stopping_moves_on_and_a_changed_plan_refuses_to_resume(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, lr=1e-9, full_epochs=6, patience=1, min_delta=0.5)
    result = trainer.fit()
    assert result.stopped_early == ["full"] and result.epochs_run < 7
    with pytest.raises(ConfigError, match="same epochs"):
        _trainer(tmp_path, head_epochs=0).fit(resume=True)
    with pytest.raises(ConfigError, match="no epochs"):
        StagedConfig(head_epochs=0, full_epochs=0).stage_epochs()
