"""explain_paths and the training trust step, on the session's trained test bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.classify.config import TrainConfig, TrustConfig
from vitkit.data import scan
from vitkit.errors import ConfigError
from vitkit.workflows.explain import explain_examples_step, explain_paths, pick_examples
from vitkit.workflows.trust import TrustContext, trust_steps

RECORD_KEYS = {"path", "label", "score", "class", "class_score", "method", "overlay", "map"}


@pytest.fixture
def mixed_folder(tiny_image_folder: Path, tmp_path: Path, imagegen: type) -> Path:
    """Two readable images with the same file name in different folders, plus broken files.
    Blue and green: the 2-epoch CNN classifies them with evidence at layer4 (it calls red
    images blue, from its bias alone, so their Grad-CAM maps are empty)."""
    folder = tmp_path / "inputs"
    for label in ("green", "blue"):
        (folder / label).mkdir(parents=True)
        shutil.copy(tiny_image_folder / label / f"{label}_000.png", folder / label / "x.png")
    imagegen.broken(folder / "broken")
    return folder


def test_cnn_writes_overlays_maps_json_and_index(trained_bundles: dict[str, Path],
                                                 mixed_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = explain_paths(trained_bundles["cnn"], [mixed_folder], out_dir=out, progress=False)
    assert (result.method, result.layer) == ("gradcam", "layer4")
    assert len(result.explanations) == 2
    assert sorted(Path(s.path).name for s in result.skipped) == [
        "empty.jpg", "notes.jpg", "truncated.jpg"]
    overlays = sorted(e.overlay.name for e in result.explanations)
    assert overlays == ["x-2.png", "x.png"]  # same stem, two files
    for e in result.explanations:
        amap = np.load(e.map)
        assert amap.dtype == np.float32 and amap.shape == (5, 5)  # 160 px / 32
        # scaled to [0, 1] with a peak: an all-zero map explains nothing and must fail here
        assert amap.min() >= 0.0 and amap.max() == pytest.approx(1.0)
        assert 0 < int((amap > 0.5).sum()) < amap.size, "a peak, not a flat map"
        with Image.open(e.overlay) as overlay:
            assert overlay.format == "PNG" and overlay.size == (160, 160)
        assert e.target == e.label  # the predicted class by default
    records = json.loads((out / "explanations.json").read_text())
    assert [set(r) for r in records] == [RECORD_KEYS] * 2
    assert {r["overlay"] for r in records} == {"x.png", "x-2.png"}  # beside the JSON file
    page = (out / "index.html").read_text()
    assert page.count("<figure") == 2 and 'src="x-2.png"' in page and "truncated.jpg" in page
    assert not any("maps are empty" in note for note in result.notes)


def test_a_model_without_evidence_gives_empty_maps_and_says_so(
        trained_bundles: dict[str, Path], tiny_image_folder: Path, tmp_path: Path) -> None:
    """Empty maps are allowed only where they are right, and then named: with the head's
    weights zeroed, no region raises any class score, so Grad-CAM is exactly zero."""
    from vitkit.predictor.predict import load
    from vitkit.workflows.explain import explain_images

    predictor = load(trained_bundles["cnn"], device="cpu")
    with torch.no_grad():
        predictor.torch_model().head.weight.zero_()
    files = sorted((tiny_image_folder / "blue").glob("*.png"))[:2]
    result = explain_images(predictor, [(f, None) for f in files], method="gradcam",
                            out_dir=tmp_path, progress=False)
    assert all(not np.load(e.map).any() for e in result.explanations)
    assert any("2 of 2 maps are empty" in note for note in result.notes)


def test_explains_the_requested_class(trained_bundles: dict[str, Path],
                                      tiny_image_folder: Path, tmp_path: Path) -> None:
    result = explain_paths(trained_bundles["cnn"], [tiny_image_folder / "red"],
                           method="gradcam++", target_class="green", out_dir=tmp_path,
                           progress=False)
    assert len(result.explanations) == 12
    assert {e.target for e in result.explanations} == {"green"}
    assert {e.method for e in result.explanations} == {"gradcam++"}
    with pytest.raises(ConfigError, match="classes are: blue, green, red"):
        explain_paths(trained_bundles["cnn"], [tiny_image_folder / "red"], target_class="pink",
                      out_dir=tmp_path, progress=False)


def test_vit_rollout_and_class_agnostic_note(trained_bundles: dict[str, Path],
                                             tiny_image_folder: Path, tmp_path: Path) -> None:
    result = explain_paths(trained_bundles["vit"], [tiny_image_folder / "blue" / "blue_001.png"],
                           target_class="red", out_dir=tmp_path, progress=False)
    assert result.method == "rollout" and result.layer is None
    amap = np.load(result.explanations[0].map)
    assert amap.shape == (10, 10)  # 160 px / 16 px patches
    assert any("does not depend on the class" in note for note in result.notes)
    # The PNG is the saved map drawn over the picture the model saw (after resize and crop):
    # every pixel, not just the size.
    from vitkit.data import load_rgb
    from vitkit.explain.overlay import model_view, overlay_map
    from vitkit.predictor.predict import load

    predictor = load(trained_bundles["vit"])
    picture, _ = load_rgb(tiny_image_folder / "blue" / "blue_001.png")
    pre = predictor.preprocessing
    seen = model_view(predictor.transform(picture), pre.mean, pre.std)
    with Image.open(result.explanations[0].overlay) as written:
        drawn = np.asarray(written.convert("RGB"))
    np.testing.assert_array_equal(drawn, np.asarray(overlay_map(seen, amap)))
    assert np.abs(drawn.astype(int) - np.asarray(seen)).max() > 50  # a map was drawn


def test_other_runtime_variant_is_explained_with_the_torch_model(
        trained_bundles: dict[str, Path], tiny_image_folder: Path, tmp_path: Path) -> None:
    result = explain_paths(trained_bundles["cnn"], [tiny_image_folder / "red" / "red_000.png"],
                           variant="torch-dynamic-int8", out_dir=tmp_path, progress=False)
    assert len(result.explanations) == 1
    assert "fp32 torch model, not torch-dynamic-int8" in result.notes[0]


def test_pick_examples_puts_mistakes_first_then_spreads_correct_ones() -> None:
    targets = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    predicted = torch.tensor([0, 1, 0, 0, 1, 0, 1, 0, 0, 0])
    assert pick_examples(predicted, targets, 4) == [1, 4, 0, 5]
    assert pick_examples(predicted, targets, 2) == [1, 0]
    assert pick_examples(torch.zeros(3), torch.zeros(3), 8) == [0, 1, 2]
    assert pick_examples(torch.ones(3), torch.zeros(3), 2) == [0, 1]


def test_training_run_holds_explanation_examples(trained_bundles: dict[str, Path]) -> None:
    """The trust step ran inside the fixture's `vitkit train` (explain_examples defaults to 8)."""
    records = json.loads((trained_bundles["vit"].parent / "explanations" /
                          "explanations.json").read_text())
    assert records and all(r["true"] in ("red", "green", "blue") for r in records)
    assert all((trained_bundles["vit"].parent / "explanations" / r["overlay"]).is_file()
               for r in records)


def test_trust_step_explains_validation_images_with_true_labels(
        trained_bundles: dict[str, Path], tiny_image_folder: Path, tmp_path: Path) -> None:
    config = TrainConfig(data=str(tiny_image_folder), model="test_resnet",
                         trust=TrustConfig(ood=False, calibrate=False, explain_examples=5,
                                           feature_map=False))
    assert [name for name, _ in trust_steps(config)] == ["explanations"]
    val = scan(tiny_image_folder).samples[::4]
    context = TrustContext(trained_bundles["cnn"], tmp_path, config, {"val": val},
                           progress=False)
    explain_examples_step(context)
    records = json.loads((tmp_path / "explanations" / "explanations.json").read_text())
    assert len(records) == 5
    by_path = {str(s.path): s.label for s in val}
    assert all(r["true"] == by_path[r["path"]] for r in records)
    assert (tmp_path / "explanations" / "index.html").is_file()
    off = config.model_copy(update={"trust": TrustConfig(explain_examples=0)})
    assert "explanations" not in [name for name, _ in trust_steps(off)]
