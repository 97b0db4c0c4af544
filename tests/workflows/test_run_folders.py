"""A new training run never starts over an old one, and says what the old one is."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitkit.errors import ConfigError
from vitkit.workflows.train import refuse_to_overwrite


def test_an_interrupted_run_is_named_with_its_progress(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    (tmp_path / "metrics.csv").write_text("epoch,stage\n1,head\n2,top\n")
    with pytest.raises(ConfigError, match=r"interrupted training run \(2 epochs done.*--resume"):
        refuse_to_overwrite(tmp_path, resume=False)
    refuse_to_overwrite(tmp_path, resume=True)


def test_a_finished_run_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a finished training run"):
        refuse_to_overwrite(tmp_path, resume=False)


def test_a_folder_without_checkpoints_is_free(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("x: 1\n")
    refuse_to_overwrite(tmp_path, resume=False)
