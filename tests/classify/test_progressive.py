"""Progressive resizing: the schedule by hand, a ViT trained small and run at full size, and
exact resume of a resized run."""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from vitkit.backbones import create
from vitkit.backbones.factory import rebuild
from vitkit.classify.config import TrainConfig
from vitkit.classify.engine import Trainer, seed_everything
from vitkit.classify.progressive import (
    ProgressiveResize,
    parse_size_range,
    plan_progressive,
    resizable,
    size_levels,
    size_schedule,
    stage_sizes,
)
from vitkit.data import ImageDataset, eval_transform, scan
from vitkit.data.layouts import ensure_validation_split
from vitkit.data.transforms import Augmentation, train_transform
from vitkit.errors import ConfigError


def test_the_sizes_step_by_16_from_start_to_end() -> None:
    assert size_levels(128, 224) == [128, 144, 160, 176, 192, 208, 224]
    assert size_schedule(128, 224, 7) == [128, 144, 160, 176, 192, 208, 224]
    assert size_schedule(128, 224, 4) == [128, 160, 192, 224]
    assert size_schedule(128, 224, 3) == [128, 176, 224]
    assert size_schedule(128, 224, 1) == [224]  # one epoch: the full size
    assert size_schedule(128, 224, 0) == []
    # an end that is not START + k * 16 is the last step, shorter
    assert size_levels(100, 224) == [100, 116, 132, 148, 164, 180, 196, 212, 224]


@pytest.mark.parametrize("epochs", range(1, 20))
@pytest.mark.parametrize(("start", "end"), [(128, 224), (96, 160), (100, 224), (32, 48)])
def test_every_schedule_grows_from_start_to_end_on_the_steps(start: int, end: int,
                                                             epochs: int) -> None:
    sizes = size_schedule(start, end, epochs)
    assert len(sizes) == epochs
    assert sizes[-1] == end
    assert sizes[0] == (start if epochs > 1 else end)
    assert sizes == sorted(sizes)
    assert set(sizes) <= set(size_levels(start, end))
    if epochs >= len(size_levels(start, end)):
        assert set(sizes) == set(size_levels(start, end)), "no size skipped"


def test_sizes_round_down_to_a_vits_patch() -> None:
    # ViT-S/14: 128 -> 126, 144 -> 140, ... ; 224 = 16 x 14 stays
    assert size_schedule(128, 224, 7, multiple=14) == [126, 140, 154, 168, 182, 196, 224]


def test_the_schedule_spans_the_image_stages_only() -> None:
    # 6 image epochs over 7 sizes: level indices round(i * 6 / 5) = 0, 1, 2, 4, 5, 6
    sizes = stage_sizes(128, 224, {"head": 1, "top": 2, "full": 4})
    assert sizes == {"top": (128, 144), "full": (160, 192, 208, 224)}
    plan = ProgressiveResize(sizes, 224, lambda size: train_transform(
        _pre(size), Augmentation()))
    assert plan.size("head", 0) == 224, "the head stage trains on full-size cached features"
    assert [plan.size("full", i) for i in range(4)] == [160, 192, 208, 224]
    with pytest.raises(ConfigError, match="trains only the head"):
        stage_sizes(128, 224, {"head": 3})


@pytest.mark.parametrize("text", ["128", "128:224:256", "a:b", "224:128", "16:224", "128:5000",
                                  "128:128"])
def test_bad_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="START:END|expected"):
        parse_size_range(text)
    with pytest.raises(ValueError):
        TrainConfig(progressive=text)
    assert parse_size_range(" 128 : 224 ") == (128, 224)


def test_the_range_must_end_at_the_training_size() -> None:
    with pytest.raises(ValueError, match="must end at image_size"):
        TrainConfig(progressive="128:224", image_size=256)
    assert TrainConfig(progressive="128:256").training_size() == 256
    with pytest.raises(ValueError, match="quoted"):  # YAML 1.1 reads 128:224 as 7904
        TrainConfig.model_validate({"progressive": 7904})


def _pre(size: int):  # noqa: ANN202
    from vitkit.data import Preprocessing

    return Preprocessing(input_size=(size, size), mean=(0.5,) * 3, std=(0.5,) * 3)


def test_a_vit_trains_at_128_and_runs_at_224_with_interpolated_positions() -> None:
    torch.manual_seed(0)
    # two of the twelve blocks: the same patch grid and position table, a sixth of the work
    created = create("vit_tiny_patch16_224", num_classes=3, weights="none",
                     timm_kwargs={"depth": 2})
    fixed = created.model.eval()
    model = resizable(created).model
    assert model.model.dynamic_img_size and not fixed.model.dynamic_img_size
    positions = dict(model.named_parameters())["model.pos_embed"]
    assert positions.shape == (1, 1 + 14 * 14, 192), "the learnt grid stays 14x14"

    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        # at its own size the interpolation is the identity: the same function as before
        torch.testing.assert_close(model.eval()(images), fixed(images), rtol=0, atol=0)

    model.train()
    small = torch.randn(2, 3, 128, 128)  # an 8x8 grid of patches
    loss = torch.nn.functional.cross_entropy(model(small), torch.tensor([0, 2]))
    loss.backward()
    grad = positions.grad
    assert grad is not None and grad.shape == (1, 197, 192) and grad.abs().sum() > 0
    with torch.no_grad():
        positions.sub_(0.1 * grad)  # one step, so full size sees trained positions
        out = model.eval()(images)
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()

    # the bundle rebuilds the user's (fixed-grid) architecture; same weights, same output
    rebuilt = rebuild(created.spec, num_classes=3).eval()
    assert not rebuilt.model.dynamic_img_size
    rebuilt.model.load_state_dict(model.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), out, rtol=0, atol=0)


def test_impossible_plans_are_refused_before_training() -> None:
    created = create("test_vit3", num_classes=3, weights="none")  # fixed 160 px grid
    config = TrainConfig(progressive="96:160", epochs=3)

    def transform(size: int):  # noqa: ANN202
        return train_transform(_pre(size), Augmentation())

    with pytest.raises(ConfigError, match="cannot run at 96 px"):
        plan_progressive(config.progressive, config.stage_epochs(), created.model, (160, 160),
                         transform)  # not made resizable
    model = resizable(created).model
    plan = plan_progressive("96:160", config.stage_epochs(), model, (160, 160), transform)
    assert plan is not None and plan.sizes == {"full": (96, 160)}
    with pytest.raises(ConfigError, match="ends at 192 px but the model trains at 160"):
        plan_progressive("96:192", config.stage_epochs(), model, (160, 160), transform)
    assert plan_progressive(None, config.stage_epochs(), model, (160, 160), transform) is None


class _Killed(Exception):
    pass


def _fit(data: Path, out: Path, resume: bool = False) -> list[dict[str, object]]:
    """The engine alone (no bundle, evaluation or report) on ``data``: 1 head epoch, then 3
    full-stage epochs over the levels 32, 48, 64."""
    config = TrainConfig(data=str(data), model="test_resnet", weights="none", epochs=4,
                         batch_size=8, num_workers=0, progressive="32:64", image_size=64,
                         out=str(out))
    samples = ensure_validation_split(scan(config.data), config.val_fraction, config.seed)
    index = {c: i for i, c in enumerate(sorted({s.label for s in samples}))}
    seed_everything(config.seed)
    created = create(config.model, num_classes=len(index), weights="none")
    created.zero_new_head()
    pre = created.preprocessing.model_copy(update={"input_size": (64, 64)})
    plan = plan_progressive(config.progressive, config.stage_epochs(), created.model, (64, 64),
                            lambda size: train_transform(
                                pre.model_copy(update={"input_size": (size, size)}),
                                config.augmentation))
    split = {name: [s for s in samples if s.split == name] for name in ("train", "val")}
    trainer = Trainer(
        created.model, config,
        train_set=ImageDataset(split["train"], index, train_transform(pre, config.augmentation)),
        train_eval_set=ImageDataset(split["train"], index, eval_transform(pre)),
        val_set=ImageDataset(split["val"], index, eval_transform(pre)),
        run_dir=out, show_progress=False, progressive=plan)
    return [asdict(record) for record in trainer.fit(resume=resume).history]


@pytest.mark.slow
def test_a_resized_run_resumes_exactly(tiny_image_folder: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped right after epoch 2's checkpoint resumes at epoch 3's size and ends
    where an uninterrupted one ends."""
    whole = _fit(tiny_image_folder, tmp_path / "A")
    assert [(r["stage"], r["image_size"]) for r in whole] == [
        ("head", 64), ("full", 32), ("full", 48), ("full", 64)]

    save_state = Trainer._save_state

    def save_then_die(self: Trainer, state, optimizer, scheduler) -> None:  # noqa: ANN001
        save_state(self, state, optimizer, scheduler)
        if state.epoch == 2:
            raise _Killed

    monkeypatch.setattr(Trainer, "_save_state", save_then_die)
    with pytest.raises(_Killed):
        _fit(tiny_image_folder, tmp_path / "B")
    monkeypatch.undo()
    with (tmp_path / "B" / "metrics.csv").open() as handle:
        assert [r["image_size"] for r in csv.DictReader(handle)] == ["64", "32"]
    resumed = _fit(tiny_image_folder, tmp_path / "B", resume=True)

    assert len(resumed) == len(whole)
    for row_a, row_b in zip(whole, resumed, strict=True):
        assert row_b["image_size"] == row_a["image_size"]
        for key in ("train_loss", "val_loss", "val_acc"):
            assert row_b[key] == pytest.approx(row_a[key], rel=1e-6, abs=1e-9), (key, row_a)
