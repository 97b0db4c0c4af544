"""Tests for vitkit.report.plots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from vitkit.report import plot_confusion_matrix, plot_learning_curves

CSV_ROWS = [  # as csv.DictReader yields them: strings, '' for missing
    {
        "epoch": "1",
        "stage": "head",
        "lr": "0.001",
        "train_loss": "1.2",
        "train_acc": "0.4",
        "val_loss": "1.1",
        "val_acc": "0.45",
        "images_per_s": "800",
        "seconds": "12",
    },
    {
        "epoch": "2",
        "stage": "head",
        "lr": "0.001",
        "train_loss": "0.9",
        "train_acc": "0.6",
        "val_loss": "",
        "val_acc": "",
        "images_per_s": "",
        "seconds": "",
    },
    {
        "epoch": "3",
        "stage": "full",
        "lr": "0.0001",
        "train_loss": "0.6",
        "train_acc": "0.75",
        "val_loss": "0.7",
        "val_acc": "0.72",
        "images_per_s": "400",
        "seconds": "25",
    },
]


def assert_png(path: Path, min_width: int = 200) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_learning_curves_from_csv_rows(tmp_path: Path) -> None:
    out = tmp_path / "plots" / "learning_curves.png"
    assert plot_learning_curves(CSV_ROWS, out) == out
    assert_png(out, min_width=800)


def test_learning_curves_tolerate_none_numbers_and_odd_epochs(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {"epoch": 1, "stage": "head", "train_loss": 1.0, "val_acc": None, "train_acc": 55.0},
        {"epoch": 1, "stage": None, "train_loss": float("nan"), "val_acc": 60.0},
        {"epoch": "x", "stage": "$mathtext$ stage", "val_loss": "0.5", "val_acc": "70"},
    ]
    assert_png(plot_learning_curves(rows, tmp_path / "lc.png"))


def test_learning_curves_single_epoch_without_stage(tmp_path: Path) -> None:
    assert_png(plot_learning_curves([{"epoch": "1", "val_acc": "0.5"}], tmp_path / "lc.png"))


def test_learning_curves_reject_empty_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no metrics rows"):
        plot_learning_curves([], tmp_path / "lc.png")
    with pytest.raises(ValueError, match="no loss or accuracy values"):
        plot_learning_curves([{"epoch": "1", "stage": "head"}], tmp_path / "lc.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix(tmp_path: Path, normalize: bool) -> None:
    cm = [[5, 1, 0], [2, 7, 1], [0, 0, 0]]  # last class has no support
    out = plot_confusion_matrix(
        cm,
        ["cat", "dog", "a $very$ long class name indeed"],
        tmp_path / "cm.png",
        normalize=normalize,
    )
    assert_png(out)


def test_confusion_matrix_many_classes(tmp_path: Path) -> None:
    n = 45
    cm = [[(i * 7 + j) % 5 for j in range(n)] for i in range(n)]
    assert_png(plot_confusion_matrix(cm, [f"class {i}" for i in range(n)], tmp_path / "cm.png"))


@pytest.mark.parametrize(
    ("cm", "labels", "message"),
    [
        ([[1, 2], [3, 4]], ["a", "b", "c"], "2x2 but there are 3 labels"),
        ([[1, 2, 3], [3, 4, 5]], ["a", "b"], r"square \(C, C\), got shape \(2, 3\)"),
        ([], [], "square"),
        ([[1, -1], [0, 1]], ["a", "b"], "non-negative integers"),
        ([[1, 0.5], [0, 1]], ["a", "b"], "non-negative integers"),
        ([[1, 2], [3]], ["a", "b"], "square"),
    ],
)
def test_confusion_matrix_rejects_bad_input(
    tmp_path: Path, cm: list, labels: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plot_confusion_matrix(cm, labels, tmp_path / "cm.png")


def test_failed_write_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cm.png"
    out.write_bytes(b"old")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        plot_confusion_matrix([[1]], ["a"], out)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]
