"""Which images `vitkit detect eval` measures, and the record it gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.detect.synthetic import make_squares

from vitkit.bundle import Bundle, BundleMeta
from vitkit.data.boxes import DetectionSample
from vitkit.detect.evaluate import choose_samples, evaluate_bundle
from vitkit.errors import DataError


def _samples(splits: list[str | None]) -> list[DetectionSample]:
    return [DetectionSample(Path(f"/d/{i}.png"), ((0.0, 0.0, 4.0, 4.0),), (0,), (8, 8), split)
            for i, split in enumerate(splits)]


def _bundle(data: str) -> Bundle:
    meta = BundleMeta(task="detect", backbone={}, labels=["a"], preprocessing={},
                      train={"config": {"data": data, "val_fraction": 0.5, "seed": 0}})
    return Bundle(Path("/b"), meta)


def test_the_split_that_is_measured(tmp_path: Path) -> None:
    trained_on = tmp_path / "data"
    with_test = _samples(["train", "test", "test"])
    assert choose_samples(with_test, "auto", _bundle(str(trained_on)), trained_on)[1] == "test"
    loose = _samples([None] * 6)
    chosen, split = choose_samples(loose, "auto", _bundle(str(trained_on)), trained_on)
    assert split == "val" and len(chosen) == 3  # training's seeded split, half held out
    again, _ = choose_samples(loose, "auto", _bundle(str(trained_on)), trained_on)
    assert [s.image for s in again] == [s.image for s in chosen]
    other = tmp_path / "other"
    assert choose_samples(loose, "auto", _bundle(str(trained_on)), other) == (loose, "all")
    with pytest.raises(DataError, match="no test images"):
        choose_samples(loose, "test", _bundle(str(trained_on)), other)
    with pytest.raises(DataError, match="unknown split"):
        choose_samples(loose, "holdout", _bundle(str(trained_on)), other)


def test_the_eval_record(detect_bundle: Path, tmp_path: Path) -> None:
    data = make_squares(tmp_path / "squares", n_train=1, n_val=2, size=64)
    (data / "data.yaml").write_text("names: [a, b]\n")  # the random bundle's classes
    record = evaluate_bundle(detect_bundle, data, progress=False)
    assert record["split"] == "all" and record["n_images"] == 3
    assert set(record) >= {"map_50", "map_50_95", "per_class", "n_images", "skipped",
                           "dropped_boxes", "variant", "pr_curves"}
    assert record["per_class"]["b"] == {"ap_50": None, "ap_50_95": None}  # no box of b
    (data / "data.yaml").write_text("names: [square]\n")
    with pytest.raises(DataError, match="the bundle detects"):
        evaluate_bundle(detect_bundle, data, progress=False)
