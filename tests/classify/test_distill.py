"""Distillation: the loss math against hand-computed values, and whole runs on tiny data."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vitkit
from vitkit.bundle import BundleMeta, save_bundle
from vitkit.classify.checkpoint import load_checkpoint
from vitkit.classify.config import DistillConfig, TrainConfig
from vitkit.classify.distill import (
    distillation_loss,
    feature_loss,
    hard_distillation_loss,
    label_loss,
    renormalize,
    soft_kl,
    token_distillation_loss,
)
from vitkit.errors import BundleError, ConfigError, DataError
from vitkit.workflows.distill import TeacherLoss, run_distill
from vitkit.workflows.train import resolve_resume_config, run_training

LN2, LN3 = math.log(2), math.log(3)


# ------------------------------------------------------------------ loss math
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_term_is_t_squared_times_kl(temperature: float) -> None:
    # softmax(t / T) = (3/4, 1/4); softmax(s / T) = (1/2, 1/2).
    teacher = torch.tensor([[temperature * LN3, 0.0]])
    student = torch.zeros(1, 2)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(soft_kl(student, teacher, temperature)) == pytest.approx(temperature**2 * kl)


def test_soft_term_is_zero_when_the_student_matches_the_teacher() -> None:
    logits = torch.randn(8, 5)
    assert float(soft_kl(logits, logits.clone(), 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(logits, logits.clone(), torch.zeros(8).long(), 4.0, 1.0)) \
        == pytest.approx(0.0, abs=1e-6)


def test_alpha_mixes_the_teacher_and_the_labels() -> None:
    teacher = torch.tensor([[2 * LN3, 0.0]])
    student = torch.zeros(1, 2)
    y = torch.tensor([1])
    soft = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))  # T = 2
    ce = LN2  # uniform student
    assert float(distillation_loss(student, teacher, y, 2.0, 0.0)) == pytest.approx(ce)
    assert float(distillation_loss(student, teacher, y, 2.0, 1.0)) == pytest.approx(soft)
    assert float(distillation_loss(student, teacher, y, 2.0, 0.3)) \
        == pytest.approx(0.3 * soft + 0.7 * ce)


def test_label_term_accepts_mixup_soft_targets() -> None:
    student = torch.randn(4, 3)
    y = torch.tensor([0, 2, 1, 2])
    assert float(label_loss(student, F.one_hot(y, 3).float())) \
        == pytest.approx(float(F.cross_entropy(student, y)))
    half = torch.full((1, 2), 0.5)  # a 50/50 mix; student (3/4, 1/4)
    expected = -0.5 * math.log(0.75) - 0.5 * math.log(0.25)
    assert float(label_loss(torch.tensor([[LN3, 0.0]]), half)) == pytest.approx(expected)


def test_hard_distillation_uses_the_teachers_top_class() -> None:
    student = torch.tensor([[LN3, 0.0]])  # (3/4, 1/4)
    teacher = torch.tensor([[5.0, -1.0]])  # top class 0, the label says 1
    y = torch.tensor([1])
    expected = 0.5 * -math.log(0.75) + 0.5 * -math.log(0.25)
    assert float(hard_distillation_loss(student, teacher, y, 0.5)) == pytest.approx(expected)
    assert float(hard_distillation_loss(student, teacher, y, 1.0)) \
        == pytest.approx(-math.log(0.75))


def test_token_loss_sends_labels_to_cls_and_the_teacher_to_dist() -> None:
    cls_logits = torch.tensor([[0.0, LN3]])  # (1/4, 3/4): right about the label 1
    dist_logits = torch.tensor([[LN3, 0.0]])  # (3/4, 1/4): right about the teacher's 0
    teacher = torch.tensor([[3.0, 0.0]])
    y = torch.tensor([1])
    loss = token_distillation_loss(cls_logits, dist_logits, teacher, y)
    assert float(loss) == pytest.approx(-math.log(0.75))
    swapped = token_distillation_loss(dist_logits, cls_logits, teacher, y)
    assert float(swapped) == pytest.approx(-math.log(0.25))


def test_feature_term_is_one_minus_the_cosine_after_the_projection() -> None:
    identity = torch.nn.Identity()
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
    teacher = torch.tensor([[0.0, 5.0], [2.0, 2.0], [-1.0, 0.0]])  # 90°, 0°, 180°
    assert float(feature_loss(student, teacher, identity)) == pytest.approx((1 + 0 + 2) / 3)
    swap = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        swap.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # (a, b) -> (b, a)
    # [1, 0] -> [0, 1]: now along the teacher's [0, 5]; a 2-D student to a 3-D teacher works too.
    assert feature_loss(student[:1], teacher[:1], swap).item() == pytest.approx(0.0, abs=1e-7)
    widen = torch.nn.Linear(2, 3)
    assert feature_loss(student, torch.randn(3, 3), widen).shape == ()


def test_optimizer_trains_extra_parameters_at_the_stage_rate() -> None:
    from vitkit.classify.schedule import StagePlan, make_optimizer

    body, extra = torch.nn.Linear(3, 3), torch.nn.Linear(3, 4)
    plan = StagePlan(groups=[(list(body.parameters()), 0.5)])
    optimizer = make_optimizer(plan, 1e-3, 0.05, list(extra.parameters()))
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert groups[id(extra.weight)]["lr"] == pytest.approx(1e-3)
    assert groups[id(extra.bias)]["weight_decay"] == 0.0
    assert groups[id(body.weight)]["lr"] == pytest.approx(5e-4)


def test_renormalize_maps_one_models_input_onto_anothers() -> None:
    pixels = torch.rand(2, 3, 8, 8)
    student_mean, student_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    teacher_mean, teacher_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    as_student = (pixels - 0.5) / 0.5
    out = renormalize(as_student, student_mean, student_std, teacher_mean, teacher_std, (8, 8))
    expected = (pixels - torch.tensor(teacher_mean).view(1, 3, 1, 1)) \
        / torch.tensor(teacher_std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)
    flat = torch.full((1, 3, 8, 8), 0.2)  # a flat image stays flat when resized
    resized = renormalize(flat, student_mean, student_std, student_mean, student_std, (12, 12))
    assert resized.shape == (1, 3, 12, 12)
    torch.testing.assert_close(resized, torch.full((1, 3, 12, 12), 0.2))


def test_config_defaults_and_checks() -> None:
    config = DistillConfig()
    assert (config.temperature, config.alpha, config.mode) == (4.0, 0.5, "soft")
    assert config.stage_epochs() == {"full": 10}
    with pytest.raises(ValueError, match="head.share"):
        DistillConfig(mode="token", stages={"head": {"share": 0.5}})
    with pytest.raises(ValueError):
        DistillConfig(alpha=1.5)


# ------------------------------------------------------------------ whole runs
@pytest.fixture(scope="module")
def teacher_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_image_folder: Path) -> Path:
    """A CNN teacher trained on the tiny folder (head only on a random test_resnet)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    config = TrainConfig(data=str(tiny_image_folder), model="test_resnet", weights="none",
                         epochs=2, num_workers=0, out=str(out),
                         stages={"head": {"share": 1.0}, "top": {"share": 0}, "full": {"share": 0}})
    return Path(run_training(config, progress=False).bundle)


def _config(teacher: Path, data: Path, out: Path, **changes: object) -> DistillConfig:
    values: dict[str, object] = {"teacher": str(teacher), "data": str(data), "model": "test_vit",
                                 "weights": "none", "epochs": 1, "num_workers": 0,
                                 "batch_size": 8, "out": str(out)}
    values.update(changes)
    return DistillConfig(**values)


def test_cnn_teacher_to_vit_student_caches_teacher_logits(
        teacher_bundle: Path, tiny_image_folder: Path, tmp_path: Path) -> None:
    """Without augmentation the teacher runs once per training image, however many epochs;
    the student is a normal bundle that records its teacher."""
    config = _config(teacher_bundle, tiny_image_folder, tmp_path / "run", epochs=2,
                     augment=False)
    result = run_distill(config, progress=False)

    assert result.epochs_run == 2
    assert result.teacher["cached"] is True
    assert result.teacher["forward_images"] == result.train_images
    assert 0.0 <= result.teacher["val_accuracy"] <= 1.0
    predictor = vitkit.load(result.bundle)
    logits = predictor(torch.randn(2, 3, 160, 160))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    meta = json.loads((Path(result.bundle) / "vitkit.json").read_text())
    record = meta["train"]["distilled_from"]
    assert record["model"] == "test_resnet"
    assert (record["temperature"], record["alpha"], record["mode"]) == (4.0, 0.5, "soft")
    assert record["bundle"] == str(teacher_bundle.resolve())
    assert meta["backbone"]["name"] == "test_vit"
    assert meta["train"]["metrics"]["val"]["accuracy"] == pytest.approx(result.val_accuracy)


def test_augmented_batches_go_through_the_teacher_every_epoch(
        teacher_bundle: Path, tiny_image_folder: Path, tmp_path: Path) -> None:
    config = _config(teacher_bundle, tiny_image_folder, tmp_path / "run", epochs=2,
                     mode="hard", model="test_resnet")
    result = run_distill(config, progress=False)
    assert result.teacher["cached"] is False
    assert result.teacher["forward_images"] == 2 * result.train_images


@pytest.mark.slow
def test_token_mode_trains_a_distilled_deit(teacher_bundle: Path, tiny_image_folder: Path,
                                            tmp_path: Path) -> None:
    config = _config(teacher_bundle, tiny_image_folder, tmp_path / "run", mode="token",
                     model="deit_tiny_distilled_patch16_224", augment=False)
    result = run_distill(config, progress=False)
    predictor = vitkit.load(result.bundle)
    assert predictor(torch.randn(1, 3, 224, 224)).shape == (1, 3)


def test_the_teacher_can_run_as_another_variant(teacher_bundle: Path, tiny_image_folder: Path,
                                                tmp_path: Path) -> None:
    result = run_distill(_config(teacher_bundle, tiny_image_folder, tmp_path / "run",
                                 model="test_resnet", augment=False,
                                 teacher_variant="torch-bf16"), progress=False)
    assert result.teacher["variant"] == "torch-bf16"
    meta = json.loads((Path(result.bundle) / "vitkit.json").read_text())
    assert meta["train"]["distilled_from"]["variant"] == "torch-bf16"
    with pytest.raises(BundleError, match="no variant 'openvino-int8'.*torch-bf16"):
        run_distill(_config(teacher_bundle, tiny_image_folder, tmp_path / "other",
                            teacher_variant="openvino-int8"), progress=False)


def test_feature_distillation_trains_a_projection_kept_in_the_checkpoint(
        teacher_bundle: Path, tiny_image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_distill(_config(teacher_bundle, tiny_image_folder, out, model="test_vit",
                                 augment=False, epochs=2, feature_weight=1.0), progress=False)
    student_dim = vitkit.load(result.bundle).model.num_features
    teacher_dim = vitkit.load(teacher_bundle).model.num_features
    checkpoint = load_checkpoint(out / "checkpoints" / "last.pt")
    assert checkpoint["loss_hook"]["weight"].shape == (teacher_dim, student_dim)
    # The optimizer moved it: AdamW's running gradient average of a matrix of that shape.
    moments = [state["exp_avg"] for state in checkpoint["optimizer"]["state"].values()
               if state["exp_avg"].shape == (teacher_dim, student_dim)]
    assert moments and moments[0].abs().sum() > 0
    assert result.teacher["feature_weight"] == 1.0
    assert result.teacher["forward_images"] == result.train_images  # features cached too
    with pytest.raises(ValueError, match="feature_weight needs the teacher's embeddings"):
        _config(teacher_bundle, tiny_image_folder, out, feature_weight=1.0,
                teacher_variant="openvino-int8")


class _Killed(Exception):
    """Stands in for a SIGKILL in the middle of an epoch."""


def test_a_killed_distillation_resumes_to_the_uninterrupted_result(
        teacher_bundle: Path, tiny_image_folder: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed mid-way through epoch 3, resumed: the same epochs, losses and weights as a run
    that was never interrupted (augmented batches, so the teacher runs on every step; a
    feature term, so the projection's state must come back from the checkpoint too)."""
    calls = {"n": 0, "kill_at": None}
    original = TeacherLoss.__call__

    def counting(self: TeacherLoss, outputs: object, batch: object) -> object:
        calls["n"] += 1
        if calls["kill_at"] is not None and calls["n"] == calls["kill_at"]:
            raise _Killed
        return original(self, outputs, batch)

    monkeypatch.setattr(TeacherLoss, "__call__", counting)
    whole = run_distill(_config(teacher_bundle, tiny_image_folder, tmp_path / "A", epochs=3,
                                model="test_resnet", seed=5, feature_weight=0.5),
                        progress=False)
    steps_per_epoch = calls["n"] // 3

    calls.update(n=0, kill_at=2 * steps_per_epoch + 1)
    killed = _config(teacher_bundle, tiny_image_folder, tmp_path / "B", epochs=3,
                     model="test_resnet", seed=5, feature_weight=0.5)
    with pytest.raises(_Killed):
        run_distill(killed, progress=False)
    assert len((tmp_path / "B" / "metrics.csv").read_text().splitlines()) == 1 + 2
    with pytest.raises(ConfigError, match="--resume"):
        run_distill(killed, progress=False)
    with pytest.raises(ConfigError, match=r"different options \(temperature\)"):
        resolve_resume_config(tmp_path / "B", killed.model_copy(update={"temperature": 9.0}),
                              {"temperature", "out"})
    assert resolve_resume_config(tmp_path / "B", killed, {"teacher"}) == killed

    calls.update(n=0, kill_at=None)
    resumed = run_distill(killed, resume=True, progress=False)
    assert calls["n"] == steps_per_epoch  # only epoch 3 ran again
    assert (resumed.epochs_run, resumed.best_epoch) == (whole.epochs_run, whole.best_epoch)
    assert resumed.val_accuracy == whole.val_accuracy
    rows_a, rows_b = (list(csv.DictReader((tmp_path / run / "metrics.csv").open()))
                      for run in ("A", "B"))
    assert [r["epoch"] for r in rows_b] == ["1", "2", "3"]
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        for key in ("lr", "train_loss", "train_acc", "val_loss", "val_acc"):
            assert float(row_b[key]) == pytest.approx(float(row_a[key]), rel=1e-5), key
    state_a = vitkit.load(whole.bundle).model.state_dict()
    state_b = vitkit.load(resumed.bundle).model.state_dict()
    for key, tensor in state_a.items():
        torch.testing.assert_close(state_b[key], tensor, rtol=1e-5, atol=1e-6, msg=key)


def test_a_head_only_stage_cannot_train_two_heads(tiny_image_folder: Path,
                                                  tmp_path: Path) -> None:
    config = TrainConfig(data=str(tiny_image_folder), model="deit_tiny_distilled_patch16_224",
                         weights="none", epochs=4, num_workers=0, out=str(tmp_path / "run"))
    assert config.stage_epochs()["head"] == 1
    with pytest.raises(ConfigError, match="two heads.*stages.head.share to 0"):
        run_training(config, progress=False)


def test_token_mode_needs_a_distillation_token(teacher_bundle: Path, tiny_image_folder: Path,
                                               tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="distillation token"):
        run_distill(_config(teacher_bundle, tiny_image_folder, tmp_path / "run", mode="token"),
                    progress=False)


def test_teacher_classes_must_match_the_data(teacher_bundle: Path, two_class_folder: Path,
                                             tmp_path: Path) -> None:
    with pytest.raises(DataError, match="only the teacher: green"):
        run_distill(_config(teacher_bundle, two_class_folder, tmp_path / "run"), progress=False)


def test_teacher_must_be_a_classifier(tiny_image_folder: Path, tmp_path: Path) -> None:
    fake = save_bundle(tmp_path / "anomaly", None, BundleMeta(
        task="anomaly", backbone={"name": "x", "source": "timm"}, labels=["normal"],
        preprocessing={}))
    with pytest.raises(ConfigError, match="'anomaly' bundle"):
        run_distill(_config(fake, tiny_image_folder, tmp_path / "run"), progress=False)
