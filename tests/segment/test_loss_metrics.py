"""Dice + CE loss, and Dice / IoU checked against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from vitkit.segment.loss import DiceCELoss
from vitkit.segment.metrics import SegmentationMeter

TARGET = torch.tensor([[0, 0, 1, 1],
                       [0, 0, 1, 1],
                       [2, 2, 2, 2],
                       [0, 0, 0, 255]])  # 255: ignored
PREDICTED = torch.tensor([[0, 1, 1, 1],
                          [0, 0, 1, 0],
                          [2, 2, 1, 1],
                          [0, 0, 0, 2]])


def test_dice_and_iou_match_the_hand_computed_values() -> None:
    # 15 counted pixels. class 0: TP 6, FP 1 (row 1 col 3), FN 1 (row 0 col 1)
    #   dice 12/14, iou 6/8. class 1: TP 3, FP 3, FN 1: dice 6/10, iou 3/7.
    #   class 2: TP 2, FP 0 (the ignored pixel does not count), FN 2: dice 4/6, iou 2/4.
    meter = SegmentationMeter(["background", "a", "b"])
    meter.update(PREDICTED[None], TARGET[None])
    result = meter.compute()
    assert result.per_class["background"]["dice"] == pytest.approx(12 / 14, abs=1e-6)
    assert result.per_class["background"]["iou"] == pytest.approx(6 / 8, abs=1e-6)
    assert result.per_class["a"]["dice"] == pytest.approx(0.6, abs=1e-6)
    assert result.per_class["a"]["iou"] == pytest.approx(3 / 7, abs=1e-6)
    assert result.per_class["b"]["dice"] == pytest.approx(4 / 6, abs=1e-6)
    assert result.per_class["b"]["iou"] == pytest.approx(0.5, abs=1e-6)
    assert result.dice == pytest.approx((0.6 + 4 / 6) / 2, abs=1e-6)  # foreground mean
    assert result.iou == pytest.approx((3 / 7 + 0.5) / 2, abs=1e-6)
    assert result.pixel_accuracy == pytest.approx(11 / 15, abs=1e-6)
    assert result.pixels == 15 and result.per_class["b"]["pixels"] == 4


def test_batches_add_up_and_logits_are_accepted() -> None:
    one = SegmentationMeter(["background", "a", "b"])
    one.update(PREDICTED[None], TARGET[None])
    one.update(TARGET.clamp(max=2)[None], TARGET[None])
    two = SegmentationMeter(["background", "a", "b"])
    logits = torch.nn.functional.one_hot(torch.stack([PREDICTED, TARGET.clamp(max=2)]), 3)
    two.update(logits.permute(0, 3, 1, 2).float(), torch.stack([TARGET, TARGET]))
    assert one.compute() == two.compute()


def test_a_class_nowhere_has_no_figure_and_background_only_scores_zero() -> None:
    meter = SegmentationMeter(["background", "a", "b"])
    target = torch.tensor([[[0, 1], [0, 1]]])
    meter.update(torch.zeros_like(target), target)  # says background everywhere
    result = meter.compute()
    assert result.per_class["b"] == {"dice": None, "iou": None, "pixels": 0}
    assert result.dice == 0.0 and result.iou == 0.0


def test_the_loss_falls_with_better_logits_and_ignores_marked_pixels() -> None:
    loss = DiceCELoss()
    target = TARGET.clamp(max=2)[None]
    right = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 8
    wrong = right.roll(1, dims=1)
    assert float(loss(right, target)) < 0.05 < float(loss(wrong, target))
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    value = loss(logits, TARGET[None])
    value.backward()
    assert torch.isfinite(value) and logits.grad is not None
    assert logits.grad[0, :, 3, 3].abs().sum() == 0  # the ignored pixel gets no gradient
    assert float(loss(logits.detach(), torch.full((1, 4, 4), 255))) == 0.0
