"""--compare-scratch without training: the comparison run's recipe, the transfer record, and
the options refused where they would be ignored."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from vitkit.classify.config import DistillConfig, TrainConfig
from vitkit.workflows.scratch import scratch_config, transfer_record


def test_the_scratch_run_is_the_same_recipe_from_random_weights(tmp_path: Path) -> None:
    config = TrainConfig(data="images", model="efficientnet_lite0", epochs=7, seed=3,
                         progressive="128:224", grad_checkpointing=True, compare_scratch=True,
                         mixup=0.2, stages={"top": {"share": 1.0}},
                         domain={"method": "dann", "target": "t", "compare_source_only": True},
                         out=str(tmp_path))
    scratch = scratch_config(config, tmp_path)
    assert scratch.weights == "none"
    assert scratch.out == str(tmp_path / "scratch")
    assert not scratch.compare_scratch and not scratch.domain.compare_source_only, \
        "no comparison runs of its own"
    assert scratch.domain.method == "dann"
    assert not (scratch.trust.ood or scratch.trust.calibrate or scratch.trust.feature_map
                or scratch.trust.explain_examples)
    changed = {"weights", "out", "compare_scratch", "domain", "trust"}
    assert scratch.model_dump(exclude=changed) == config.model_dump(exclude=changed)


@dataclass
class _Result:
    val_accuracy: float
    test_accuracy: float | None = None
    bundle: str = "b"
    run_dir: str = "r"
    best_epoch: int = 4
    learning_curve: dict[str, Any] = field(default_factory=lambda: {"epochs": 5})


def test_the_transfer_record_holds_both_accuracies_and_the_gains() -> None:
    record = transfer_record(_Result(0.9), _Result(0.6, run_dir="r/scratch"))
    assert record["gain"] == pytest.approx(0.75)  # (0.9 - 0.6) / (1 - 0.6)
    assert (record["pretrained_accuracy"], record["scratch_accuracy"]) == (0.9, 0.6)
    assert record["scratch_run"] == "r/scratch" and record["scratch_best_epoch"] == 4
    assert "test_gain" not in record
    with_test = transfer_record(_Result(0.9, test_accuracy=0.8), _Result(0.6, test_accuracy=0.5))
    assert with_test["test_gain"] == pytest.approx(0.6)  # (0.8 - 0.5) / (1 - 0.5)


@pytest.mark.parametrize(("options", "message"), [
    ({"compare_scratch": True, "weights": "none"}, "already starts from random weights"),
    ({"compare_scratch": True, "continual": {"continue_from": "b"}}, "continual"),
    ({"progressive": "128:224", "continual": {"continue_from": "b"}}, "continual"),
])
def test_extras_are_refused_where_they_would_be_ignored(options: dict[str, Any],
                                                        message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


@pytest.mark.parametrize("option", [{"progressive": "128:224"}, {"compare_scratch": True}])
def test_distill_refuses_the_train_only_extras(option: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="`vitkit distill` does not take"):
        DistillConfig(**option)
    assert DistillConfig(grad_checkpointing=True).grad_checkpointing
