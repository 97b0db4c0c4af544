"""Seeded, stratified split assignment and split summaries."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from vitkit.data.layouts import (
    Sample,
    ScannedData,
    assign_splits,
    class_counts,
    ensure_validation_split,
    scan,
)
from vitkit.errors import ConfigError, DataError


def _samples(counts: dict[str, int], split: str | None = None) -> list[Sample]:
    return [
        Sample(Path(f"/data/{label}/{i:03d}.jpg"), label, split)
        for label, n in counts.items()
        for i in range(n)
    ]


def _split_of(samples: list[Sample]) -> dict[Path, str | None]:
    return {s.path: s.split for s in samples}


def test_same_seed_same_split_regardless_of_input_order():
    samples = _samples({"a": 30, "b": 17})
    shuffled = samples[:]
    random.Random(123).shuffle(shuffled)

    first = assign_splits(samples, 0.2, 0.1, seed=7)
    again = assign_splits(samples, 0.2, 0.1, seed=7)
    reordered = assign_splits(shuffled, 0.2, 0.1, seed=7)

    assert first == again
    assert _split_of(reordered) == _split_of(first)
    assert [s.path for s in reordered] == [s.path for s in shuffled]  # keeps input order


def test_split_of_a_class_does_not_depend_on_other_classes():
    alone = assign_splits(_samples({"a": 30}), seed=3)
    with_other = assign_splits(_samples({"a": 30, "b": 9}), seed=3)
    assert _split_of(alone).items() <= _split_of(with_other).items()


def test_different_seed_different_split():
    samples = _samples({"a": 50})
    assert _split_of(assign_splits(samples, seed=0)) != _split_of(assign_splits(samples, seed=1))


def test_stratified_counts():
    samples = assign_splits(_samples({"a": 10, "b": 20, "c": 50}), 0.2, 0.1, seed=0)
    counts = Counter((s.label, s.split) for s in samples)
    assert counts == {
        ("a", "val"): 2, ("a", "test"): 1, ("a", "train"): 7,
        ("b", "val"): 4, ("b", "test"): 2, ("b", "train"): 14,
        ("c", "val"): 10, ("c", "test"): 5, ("c", "train"): 35,
    }


def test_small_classes_get_one_val_image_and_keep_one_train_image():
    samples = assign_splits(_samples({"two": 2, "three": 3, "one": 1}), 0.2, 0.1, seed=0)
    counts = Counter((s.label, s.split) for s in samples)
    assert counts == {
        ("two", "val"): 1, ("two", "train"): 1,
        ("three", "val"): 1, ("three", "test"): 1, ("three", "train"): 1,
        ("one", "train"): 1,
    }


def test_existing_splits_are_kept():
    fixed = _samples({"a": 4}, split="val") + _samples({"b": 3}, split="test")
    fresh = [Sample(Path(f"/new/a/{i}.jpg"), "a", None) for i in range(10)]
    result = assign_splits(fixed + fresh, 0.2, seed=0)
    assert result[: len(fixed)] == fixed
    assert Counter(s.split for s in result[len(fixed):]) == {"train": 8, "val": 2}


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.0), (0.5, 0.5), (0.2, -0.2), (1.0, 0.0)])
def test_invalid_fractions(val, test):
    with pytest.raises(ConfigError, match="fractions"):
        assign_splits(_samples({"a": 5}), val, test)


def test_ensure_validation_split_folder_layout(tmp_path, images):
    images.class_tree(tmp_path, {"cat": 10, "dog": 5})
    samples = ensure_validation_split(scan(tmp_path), 0.2, seed=0, test_fraction=0.2)
    assert class_counts(samples) == {
        "train": {"cat": 6, "dog": 3},
        "val": {"cat": 2, "dog": 1},
        "test": {"cat": 2, "dog": 1},
    }


def test_ensure_validation_split_carves_val_from_train(tmp_path, images):
    images.class_tree(tmp_path / "train", {"cat": 10, "dog": 5})
    images.class_tree(tmp_path / "test", {"cat": 1, "dog": 1})
    data = scan(tmp_path)

    samples = ensure_validation_split(data, 0.2, seed=0, test_fraction=0.5)

    # test/ exists, so no test images are carved from train despite test_fraction.
    assert class_counts(samples) == {
        "train": {"cat": 8, "dog": 4},
        "val": {"cat": 2, "dog": 1},
        "test": {"cat": 1, "dog": 1},
    }
    assert samples == ensure_validation_split(data, 0.2, seed=0, test_fraction=0.5)


def test_ensure_validation_split_keeps_existing_val(tmp_path, images):
    images.class_tree(tmp_path / "train", {"cat": 4, "dog": 4})
    images.class_tree(tmp_path / "val", {"cat": 1, "dog": 1})
    data = scan(tmp_path)
    assert ensure_validation_split(data) == data.samples


def test_ensure_validation_split_partial_manifest(tmp_path):
    manifest = tmp_path / "m.csv"
    rows = [f"{label}{i}.jpg,{label},{'test' if i == 0 else ''}"
            for label in ("cat", "dog") for i in range(6)]
    manifest.write_text("path,label,split\n" + "\n".join(rows) + "\n")

    samples = ensure_validation_split(scan(manifest), 0.2, seed=0, test_fraction=0.3)

    assert class_counts(samples) == {
        "train": {"cat": 4, "dog": 4},
        "val": {"cat": 1, "dog": 1},
        "test": {"cat": 1, "dog": 1},
    }


def test_ensure_validation_split_impossible():
    data = ScannedData(Path("/d"), "folders", _samples({"a": 1, "b": 1}), ["a", "b"])
    with pytest.raises(DataError, match="at least 2 images per class"):
        ensure_validation_split(data)


def test_ensure_validation_split_needs_a_val_fraction():
    data = ScannedData(Path("/d"), "splits", _samples({"a": 5, "b": 5}, "train"), ["a", "b"])
    with pytest.raises(ConfigError, match="validation fraction"):
        ensure_validation_split(data, val_fraction=0.0)


def test_class_counts_order_and_unassigned():
    samples = _samples({"b": 2}, "val") + _samples({"a": 1, "b": 1}) + _samples({"a": 3}, "train")
    counts = class_counts(samples)
    assert counts == {"train": {"a": 3}, "val": {"b": 2}, "unassigned": {"a": 1, "b": 1}}
    assert list(counts) == ["train", "val", "unassigned"]
