"""`vitkit explain` in a subprocess: overlays and maps written, one JSON document on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.e2e.cli import run_cli


@pytest.mark.slow
def test_explain_cnn_and_vit_json(trained_bundles: dict[str, Path], tiny_image_folder: Path,
                                  tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    for family, method, shape in (("cnn", "gradcam++", (5, 5)), ("vit", "auto", (10, 10))):
        out = tmp_path / family
        proc = run_cli("explain", trained_bundles[family], tiny_image_folder / "green", broken,
                       "--method", method, "--out", out, "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout)
        assert set(result) >= {"method", "explanations", "skipped"}
        assert result["method"] == ("gradcam++" if family == "cnn" else "rollout")
        assert len(result["explanations"]) == 12
        assert result["skipped"] == [{"path": str(broken), "error": result["skipped"][0]["error"]}]
        for record in result["explanations"]:
            assert set(record) >= {"path", "label", "score", "class", "overlay", "map"}
            assert record["label"] in ("red", "green", "blue") and 0 <= record["score"] <= 1
            assert Path(record["overlay"]).is_file()
            assert np.load(record["map"]).shape == shape
        assert len(json.loads((out / "explanations.json").read_text())) == 12
        assert (out / "index.html").is_file()


def test_explain_user_errors_exit_2(trained_bundles: dict[str, Path], tiny_image_folder: Path,
                                    tmp_path: Path) -> None:
    proc = run_cli("explain", trained_bundles["cnn"], tiny_image_folder / "red", "--method",
                   "rollout", "--out", tmp_path)
    assert proc.returncode == 2
    message = " ".join(proc.stderr.split())  # rich wraps long lines
    assert "no attention layers" in message and "Traceback" not in message
