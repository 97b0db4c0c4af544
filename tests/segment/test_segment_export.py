"""OpenVINO (and the ONNX graph under it) for a segment bundle: dynamic batch, height and
width, parity recorded, and the variant run by the predictor at two sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.segment.conftest import write_bundle

from vitkit.errors import VitkitError
from vitkit.segment.predict import SegmentPredictor
from vitkit.workflows.segment_export import run_segment_export


def test_openvino_export_with_dynamic_sides(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    bundle = write_bundle(tmp_path / "bundle")
    with pytest.raises(VitkitError, match="choose from onnx-fp32, openvino-fp32"):
        run_segment_export(bundle, ["tflite"])
    result = run_segment_export(bundle, ["openvino-fp32"], progress=False)
    (entry,) = result["variants"]
    assert entry["file"] == "variants/openvino/model.xml" and entry["options"]["dynamic_size"]
    parity = entry["parity"]
    assert parity["ok"] and parity["sizes"] == [[64, 64], [96, 128]]
    assert "random inputs" in result["images"]  # a bundle with no training data recorded
    meta = json.loads((bundle / "vitkit.json").read_text())
    assert [v["name"] for v in meta["variants"]] == ["openvino-fp32"]
    guide = json.loads((bundle / "variants" / "preprocessing.json").read_text())
    assert guide["output"]["shape"] == ["batch", 3, "height", "width"]

    openvino = SegmentPredictor.load(bundle, variant="openvino-fp32")
    reference = SegmentPredictor.load(bundle)
    for size in ((64, 64), (96, 128), (64, 64)):  # same batch, other sides, and back
        batch = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(size[1]))
        got, want = openvino.logits(batch), reference.logits(batch)
        assert got.shape == want.shape == (2, 3, *size)
        assert (got - want).abs().max() < 1e-3
