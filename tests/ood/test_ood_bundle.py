"""OOD in real bundles: fitted at the end of training, stored, used by the Predictor, drift.

The tiny bundles learn red/green/blue striped images; yellow plain images and pixel noise are
out of distribution for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import class_image

from vitkit.compress.reference import reference_images
from vitkit.ood import METHODS
from vitkit.ood import load_ood_detector as load_detector
from vitkit.predictor.embed import embed_paths
from vitkit.predictor.predict import Prediction, load
from vitkit.workflows.drift import run_drift
from vitkit.workflows.ood import run_ood_eval, run_ood_fit


def _odd_images(folder: Path) -> list[Path]:
    """8 yellow plain images (a colour and pattern never trained on) and 8 of pixel noise."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(8):
        class_image("yellow", i).save(folder / f"yellow_{i}.png")
        noise = np.random.default_rng(i).integers(0, 256, (48, 48, 3), np.uint8)
        Image.fromarray(noise).save(folder / f"noise_{i}.png")
        paths += [folder / f"yellow_{i}.png", folder / f"noise_{i}.png"]
    return paths


def _predict(bundle: Path, paths: list[Path], **load_args: object) -> list[Prediction]:
    results = list(load(bundle, **load_args).predict_paths(paths))  # type: ignore[arg-type]
    assert all(isinstance(r, Prediction) for r in results)
    return results  # type: ignore[return-value]


@pytest.mark.parametrize(("family", "method"), [("cnn", "knn"), ("vit", "mahalanobis_norm")])
def test_training_fits_ood_and_predict_says_unknown(trained_bundles: dict[str, Path],
                                                    tmp_path: Path, family: str,
                                                    method: str) -> None:
    bundle = trained_bundles[family]
    record = json.loads((bundle / "vitkit.json").read_text())["ood"]
    assert record["method"] == method and record["family"] == family
    assert set(record["methods"]) == set(METHODS)
    run_file = json.loads((bundle.parent / "ood.json").read_text())
    assert run_file["method"] == method and run_file["rough_threshold"] is True  # 6 val images
    assert "rough" in run_file["note"]

    odd = _predict(bundle, _odd_images(tmp_path / "odd"))
    assert sum(p.label == "unknown" for p in odd) >= 14  # of 16
    assert all(p.ood_score is not None and p.topk for p in odd)

    val = reference_images(load(bundle).meta, None, "val")
    assert val is not None
    kept = _predict(bundle, [s.path for s in val.samples])
    assert np.mean([p.label != "unknown" for p in kept]) >= 0.95
    assert all(p.to_dict()["ood"] is False for p in kept if p.label != "unknown")

    plain = _predict(bundle, _odd_images(tmp_path / "odd"), ood=False)
    assert all(p.label != "unknown" and "ood" not in p.to_dict() for p in plain)


def test_scores_agree_across_one_pass_two_passes_and_int8(trained_bundles: dict[str, Path],
                                                          tmp_path: Path) -> None:
    bundle = trained_bundles["vit"]
    paths = _odd_images(tmp_path / "odd")[:6]
    one_pass = [p.ood_score for p in _predict(bundle, paths)]  # torch fp32: features + logits
    predictor = load(bundle)
    assert predictor.ood is not None
    embedded = embed_paths(predictor, paths, progress=False)
    np.testing.assert_allclose(one_pass, predictor.ood.score(embedded.features,
                                                             embedded.logits), rtol=1e-5)
    # An int8 variant still scores on the fp32 features (torch_model), not its own logits.
    int8 = [p.ood_score for p in _predict(bundle, paths, variant="torch-dynamic-int8")]
    np.testing.assert_allclose(int8, one_pass, rtol=1e-5)


def test_ood_fit_stores_what_it_fitted_and_eval_measures_every_method(
        fresh_bundle: Callable[[str], Path], tiny_image_folder: Path, tmp_path: Path) -> None:
    bundle = fresh_bundle("cnn")
    result = run_ood_fit(bundle, str(tiny_image_folder), method="mahalanobis", progress=False)
    assert result.method == "mahalanobis" and result.accept_rate_val >= 0.95
    detector = load_detector(bundle)
    assert detector is not None and detector.method == "mahalanobis"
    assert detector.threshold == pytest.approx(result.threshold)
    assert detector.expected_ood_share == pytest.approx(1 / 7)  # 6 val images, all accepted

    odd = _odd_images(tmp_path / "odd")
    report = run_ood_eval(bundle, str(tiny_image_folder), str(tmp_path / "odd"),
                          progress=False)
    assert set(report["methods"]) == set(METHODS)
    for scores in report["methods"].values():
        assert {"auroc", "fpr95", "threshold", "accept_rate", "refuse_rate_out"} <= set(scores)
    assert report["selected"] == "mahalanobis" and report["n_out"] == len(odd)
    assert report["in"].endswith("(val split of the training data)") and report["n_in"] == 6
    assert report["stored"]["method"] == "mahalanobis"
    assert report["methods"]["knn"]["auroc"] > 0.9


def test_drift_same_images_are_not_drift_and_noise_is(trained_bundles: dict[str, Path],
                                                      tmp_path: Path) -> None:
    bundle = trained_bundles["cnn"]
    same = tmp_path / "same"
    for label in ("red", "green", "blue"):
        (same / label).mkdir(parents=True)
        for i in range(10):  # unseen images from the same generator (another seed)
            class_image(label, i, seed=7).save(same / label / f"{i}.png")
    calm = run_drift(bundle, str(same), progress=False, permutations=200)
    assert calm["n_new"] == 30 and calm["reference"]["source"] == "bundle (OOD fit)"
    assert calm["feature_distance"]["p_value"] > 0.05
    assert set(calm["class_mix"]["new"]) == {"red", "green", "blue"}
    assert not calm["drifted"], calm["reasons"]

    _odd_images(tmp_path / "odd")
    shifted = run_drift(bundle, str(tmp_path / "odd"), progress=False, permutations=200)
    assert shifted["drifted"] and shifted["ood_share"] >= 0.8
    assert shifted["feature_distance"]["p_value"] < 0.01


def test_the_stored_reference_is_a_sample_of_training_features(
        trained_bundles: dict[str, Path]) -> None:
    from vitkit.ood import load_drift_reference

    reference = load_drift_reference(trained_bundles["cnn"])
    assert reference is not None
    assert reference.features.shape == (30, load(trained_bundles["cnn"]).torch_model()
                                        .num_features)
    assert float(reference.class_counts.sum()) == 30
    assert torch.isfinite(reference.features).all()


def test_the_detector_is_read_only_when_predictions_need_it(
        fresh_bundle: Callable[[str], Path]) -> None:
    from vitkit.errors import BundleError

    bundle = fresh_bundle("cnn")
    predictor = load(bundle)
    (bundle / "ood.safetensors").unlink()  # eval, bench, explain never touch it
    size = predictor.preprocessing.input_size
    assert predictor.predict_proba(torch.zeros(2, 3, *size)).shape == (2, 3)
    with pytest.raises(BundleError, match="ood.safetensors"):
        _ = predictor.ood
    assert load(bundle, ood=False).ood is None
