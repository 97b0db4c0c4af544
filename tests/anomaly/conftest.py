"""Fixtures shared by the anomaly tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.anomaly.woven import N_NORMAL, to_image, woven_texture


@pytest.fixture(scope="module")
def normal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``N_NORMAL`` generated woven textures: the normal images of the anomaly tests."""
    folder = tmp_path_factory.mktemp("woven") / "good"
    folder.mkdir()
    for seed in range(N_NORMAL):
        to_image(woven_texture(seed)).save(folder / f"{seed:02d}.png")
    return folder
