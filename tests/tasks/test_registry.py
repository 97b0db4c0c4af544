"""The task registry: each task answers for its bundles; an unknown one is a clear error."""

from __future__ import annotations

import pytest

from vitkit.errors import BundleError
from vitkit.tasks.base import get_task, task_names


def test_classify_and_anomaly_are_plug_ins_with_their_accuracy_figure() -> None:
    assert {"classify", "anomaly", "segment", "detect"} <= set(task_names())
    assert (get_task("classify").name, get_task("classify").accuracy_key) == (
        "classify", "accuracy")
    assert get_task("anomaly").accuracy_key == "auroc"


def test_an_unknown_task_names_the_known_ones() -> None:
    with pytest.raises(BundleError, match=r"unknown task 'pose'.*classify, anomaly"):
        get_task("pose")
