"""mAP against cases worked out by hand (COCO: 101-point interpolated precision)."""

from __future__ import annotations

import pytest
import torch

from vitkit.detect.metrics import DetectionMetric


def pred(boxes: list[list[float]], scores: list[float], labels: list[int]
         ) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def truth(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels)}


def scores(classes: list[str], predictions: list[dict], targets: list[dict]):  # noqa: ANN201
    metric = DetectionMetric(classes)
    metric.update(predictions, targets)
    return metric.compute()


def test_a_perfect_prediction_scores_one() -> None:
    box = [[10.0, 10.0, 50.0, 50.0]]
    result = scores(["a"], [pred(box, [0.9], [0])], [truth(box, [0])])
    assert result.map_50 == result.map_50_95 == 1.0
    assert result.per_class == {"a": {"ap_50": 1.0, "ap_50_95": 1.0}}
    assert result.pr_curves["a"]["precision"] == [1.0] * 101
    assert result.n_images == 1


def test_a_box_shifted_below_iou_half_scores_zero() -> None:
    # [30, 70] x [10, 50] against [10, 50] x [10, 50]: overlap 800 px, union 2400, IoU 1/3
    result = scores(["a"], [pred([[30.0, 10.0, 70.0, 50.0]], [0.9], [0])],
                    [truth([[10.0, 10.0, 50.0, 50.0]], [0])])
    assert result.map_50 == 0.0 and result.map_50_95 == 0.0


def test_iou_0_62_counts_at_three_of_the_ten_thresholds() -> None:
    # 100 x 62 inside 100 x 100: IoU 0.62 >= 0.5, 0.55, 0.6 only
    result = scores(["a"], [pred([[0.0, 0.0, 100.0, 62.0]], [0.9], [0])],
                    [truth([[0.0, 0.0, 100.0, 100.0]], [0])])
    assert result.map_50 == 1.0
    assert result.map_50_95 == pytest.approx(0.3)


def test_a_confident_false_positive_halves_the_precision() -> None:
    # ranked: a false positive (0.9), then the true box (0.8): recall 1 at precision 1/2
    result = scores(["a"], [pred([[60.0, 60.0, 90.0, 90.0], [10.0, 10.0, 50.0, 50.0]],
                                 [0.9, 0.8], [0, 0])],
                    [truth([[10.0, 10.0, 50.0, 50.0]], [0])])
    assert result.map_50 == pytest.approx(0.5)


def test_classes_missed_or_absent() -> None:
    # "a" found, "b" missed (AP 0), "c" has no boxes at all (no AP, left out of the mean)
    result = scores(["a", "b", "c"], [pred([[10.0, 10.0, 50.0, 50.0]], [0.9], [0])],
                    [truth([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 80.0, 80.0]], [0, 1])])
    assert result.per_class["a"]["ap_50"] == 1.0
    assert result.per_class["b"]["ap_50"] == 0.0
    assert result.per_class["c"] == {"ap_50": None, "ap_50_95": None}
    assert result.map_50 == pytest.approx(0.5)
    assert set(result.pr_curves) == {"a", "b"}
