"""`vitkit detect train`'s checks before any training: the held-out split when the data has
none, and a resumed run that may not change its options."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.detect.synthetic import make_squares

from vitkit.config import dump_config
from vitkit.errors import ConfigError
from vitkit.workflows.detect import DetectTrainConfig, _prepare_data, run_detect_train


def test_without_a_val_split_part_of_train_is_held_out(tmp_path: Path) -> None:
    data = make_squares(tmp_path / "squares", n_train=10, n_val=0, size=64)
    config = DetectTrainConfig(data=str(data), out=str(tmp_path / "run"), val_fraction=0.3)
    (tmp_path / "run").mkdir()
    samples, classes, skipped, dropped = _prepare_data(config, tmp_path / "run", False)
    splits = [s.split for s in samples]
    assert classes == ["square"] and (skipped, dropped) == (0, 0)
    assert splits.count("val") == 3 and splits.count("train") == 7
    assert (tmp_path / "run" / "splits.csv").read_text().startswith("path,split,boxes")


def test_a_resumed_run_keeps_its_options(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    dump_config(DetectTrainConfig(data="d", out=str(run), size=96), run / "config.yaml")
    changed = DetectTrainConfig(data="d", out=str(run), size=128)
    with pytest.raises(ConfigError, match=r"different options \(size\)"):
        run_detect_train(changed, resume=True, progress=False, changed={"data", "out", "size"})
    with pytest.raises(ConfigError, match="--out"):
        run_detect_train(DetectTrainConfig(data="d", out=""), progress=False)
    with pytest.raises(ConfigError, match="multiple of 32"):
        DetectTrainConfig(data="d", out="o", size=100)


def test_augmentation_is_one_key_for_every_task_and_the_old_name_still_reads() -> None:
    assert DetectTrainConfig(data="d").out == "runs/detect"
    assert DetectTrainConfig(data="d").augmentation.translate == 0.05
    new = DetectTrainConfig.model_validate({"data": "d", "augmentation": {"vflip": 0.5}})
    old = DetectTrainConfig.model_validate({"data": "d", "augment": {"vflip": 0.5}})
    assert new.augmentation.vflip == old.augmentation.vflip == 0.5
    assert "augmentation" in new.model_dump() and "augment" not in new.model_dump()
