"""The small decisions around training and evaluation: which rows go to val, which rows a
modality is measured on, how --epochs becomes the stages, and refusals at the CLI's door."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitkit.cli.fusion import refuse_for_other_bundles, split_epochs
from vitkit.data.paired import PairedRow
from vitkit.errors import VitkitError
from vitkit.fusion.evaluate import check_modality, rows_for
from vitkit.workflows.fusion import _assign_splits, select_split


def _rows(labels: str, split: str | None = None) -> list[PairedRow]:
    return [PairedRow(Path(f"{i}.png"), Path(f"{i}.wav"), label, split, line=i + 2)
            for i, label in enumerate(labels)]


def test_without_val_rows_each_label_gives_its_share_seeded() -> None:
    rows = _rows("aaaaaaaaaabbbbbbbbbbc") + _rows("a", "test")
    split = _assign_splits(rows, 0.2, seed=3)
    val = [r for r in split if r.split == "val"]
    assert sorted(str(r.label) for r in val) == ["a", "a", "b", "b"]  # "c" alone: train
    assert split[-1].split == "test" and split[20].split == "train"
    assert _assign_splits(rows, 0.2, seed=3) == split
    assert _assign_splits(rows, 0.2, seed=4) != split


def test_with_val_rows_the_unsplit_ones_train() -> None:
    rows = _rows("ab") + _rows("ab", "val")
    assert [r.split for r in _assign_splits(rows, 0.5, 0)] == ["train", "train", "val", "val"]


def test_a_modality_is_measured_on_the_rows_that_have_it_alone() -> None:
    rows = [PairedRow(Path("a.png"), Path("a.wav"), "x"), PairedRow(None, Path("b.wav"), "y"),
            PairedRow(Path("c.png"), None, "z")]
    images, without = rows_for(rows, "image")
    assert [(r.image, r.audio) for r in images] == [(Path("a.png"), None), (Path("c.png"), None)]
    assert without == 1
    audio, without = rows_for(rows, "audio")
    assert [(r.image, r.audio) for r in audio] == [(None, Path("a.wav")), (None, Path("b.wav"))]
    assert rows_for(rows, "both") == (rows, 0)
    with pytest.raises(VitkitError, match="'sound' is not one of both, image, audio"):
        check_modality("sound")


def test_eval_measures_test_else_val_else_all() -> None:
    assert select_split(_rows("ab", "val") + _rows("c", "test"))[0] == "test"
    assert select_split(_rows("ab", "val") + _rows("c", "train"))[0] == "val"
    assert select_split(_rows("ab"))[0] == "all"


def test_epochs_become_stages() -> None:
    assert split_epochs(1) == {"head_epochs": 0, "full_epochs": 1}
    assert split_epochs(3) == {"head_epochs": 1, "full_epochs": 2}
    assert split_epochs(12) == {"head_epochs": 2, "full_epochs": 10}


def test_image_audio_options_are_refused_for_other_bundles() -> None:
    refuse_for_other_bundles(image=None, audio=None)
    with pytest.raises(VitkitError, match="--image, --audio apply to image \\+ audio bundles"):
        refuse_for_other_bundles(image=Path("a.png"), audio=Path("a.wav"))
