"""Out-of-fold thresholds: every normal image is learned, each is scored by a twin that did not
learn it, and the false-alarm rate on new normal images matches the nominal percentile."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.anomaly.woven import to_image, woven_texture

from vitkit.anomaly import folds
from vitkit.anomaly.config import AnomalyFitConfig
from vitkit.anomaly.detector import load_anomaly_detector as load_detector
from vitkit.anomaly.folds import affordable_folds, assign_folds, fit_out_of_fold, indexed
from vitkit.anomaly.methods import Embedding, PatchMeanMethod
from vitkit.anomaly.threshold import percentile_threshold
from vitkit.workflows.anomaly import run_eval, run_fit


def test_folds_are_seeded_and_as_equal_as_possible() -> None:
    fold_of = assign_folds(11, 3, seed=4)
    assert sorted(fold_of.count(f) for f in range(3)) == [3, 4, 4]
    assert fold_of == assign_folds(11, 3, seed=4) != assign_folds(11, 3, seed=5)


def test_folds_are_lowered_to_what_fits_in_memory() -> None:
    assert affordable_folds(5, 100, twin_bytes=10, budget=100) == 5
    assert affordable_folds(5, 100, twin_bytes=30, budget=100) == 3
    assert affordable_folds(5, 3, twin_bytes=1, budget=100) == 3  # one image per fold at most
    assert affordable_folds(5, 100, twin_bytes=60, budget=100) == 0  # not even two fit
    assert affordable_folds(5, 1, twin_bytes=1, budget=100) == 0


def _canvases(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.3 + 0.05 * torch.rand(n, 1, 24, 24, generator=generator)


def test_each_image_is_scored_by_a_model_fitted_on_the_other_folds_only() -> None:
    images = _canvases(9)
    images[4] += 0.3  # an odd one among the normals: only a model that learned it forgives it
    method = PatchMeanMethod(patch_size=8, size=(24, 24))

    def passes() -> Iterator[tuple[torch.Tensor, list[int]]]:
        return indexed(iter(images.split(4)))

    details, out_of_fold = fit_out_of_fold(method, passes, 9, folds=3, seed=1)
    assert out_of_fold is not None and out_of_fold.folds == 3
    assert details["grid"] == [3, 3]
    for fold in range(3):  # by hand: fit on the other folds, score this one
        twin = PatchMeanMethod(patch_size=8, size=(24, 24))
        members = [i for i in range(9) if out_of_fold.fold_of[i] == fold]
        twin.add_normal(images[[i for i in range(9) if i not in members]])
        twin.finish_fit()
        expected, _ = twin.score(images[members])
        assert torch.allclose(out_of_fold.scores[members], expected)
    alone = PatchMeanMethod(patch_size=8, size=(24, 24))  # the kept model learned all nine
    alone.add_normal(images)
    alone.finish_fit()
    assert torch.equal(method.tensors()["mean"], alone.tensors()["mean"])
    in_sample, _ = method.score(images)
    assert out_of_fold.scores[4] > in_sample[4]


def test_features_are_extracted_once_when_they_fit_in_the_cache(
        monkeypatch: pytest.MonkeyPatch) -> None:
    images = _canvases(9)
    images[4] += 0.3
    results = {}
    for budget in (folds.EMBEDDING_CACHE_BYTES, 0):  # kept, then a second pass
        monkeypatch.setattr(folds, "EMBEDDING_CACHE_BYTES", budget)
        method = PatchMeanMethod(patch_size=8, size=(24, 24))
        embedded: list[int] = []
        original = method.embed

        def counted(batch: torch.Tensor, seen: list[int] = embedded,
                    embed: Callable[[torch.Tensor], Embedding] = original) -> Embedding:
            seen.append(len(batch))
            return embed(batch)

        monkeypatch.setattr(method, "embed", counted)
        _, out_of_fold = fit_out_of_fold(method, lambda: indexed(iter(images.split(4))), 9,
                                         folds=3, seed=1)
        assert out_of_fold is not None
        results[budget] = (sum(embedded), out_of_fold.scores)
    (cached_count, cached), (uncached_count, uncached) = results.values()
    assert (cached_count, uncached_count) == (9, 18)
    assert torch.equal(cached, uncached)


@pytest.mark.slow
def test_false_alarms_on_new_normal_images_match_the_nominal_rate(tmp_path: Path) -> None:
    """PatchCore memorises what it learns: scored by the model that learned them, normal
    images look far more normal than new ones, and a threshold set on them flags most new
    normal images. Out-of-fold scores keep the observed rate near the nominal 10%."""
    normal = tmp_path / "good"
    normal.mkdir()
    for seed in range(30):
        to_image(woven_texture(seed)).save(normal / f"{seed:02d}.png")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for seed in range(100, 160):
        to_image(woven_texture(seed)).save(fresh / f"{seed}.png")
    config = AnomalyFitConfig(data=str(normal), out=str(tmp_path / "bundle"), percentile=90.0,
                              batch_size=16)
    result = run_fit(config, progress=False)
    assert result.n_fit == 30 and result.n_holdout == 0
    assert result.details["out_of_fold"]["folds"] == 5
    detector = load_detector(tmp_path / "bundle", "cpu")
    fresh_scores = np.array([r.raw_score for r, _ in
                             detector.score_paths(sorted(fresh.iterdir()))])
    observed = float((fresh_scores > detector.threshold).mean())
    assert 0.0 < observed <= 0.25, observed  # nominal 0.10; 60 images: 0.25 is > 3 s.e. away
    learned_scores = np.array([r.raw_score for r, _ in
                               detector.score_paths(sorted(normal.iterdir()))])
    in_sample = percentile_threshold(learned_scores, 90.0)
    assert float((fresh_scores > in_sample).mean()) >= 0.5  # the threshold OOF avoids


class _Pixels(torch.nn.Module):
    """A 'backbone' whose feature map is the image itself: PatchCore on raw pixels."""

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [images]


def test_patchcore_twins_are_its_bank_without_the_left_out_images() -> None:
    from vitkit.anomaly.methods import PatchCoreMethod
    from vitkit.data import Preprocessing

    pre = Preprocessing(input_size=(8, 8), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    method = PatchCoreMethod(_Pixels(), pre, torch.device("cpu"), coreset_ratio=1.0,
                             num_neighbors=1, image_score="max")
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    images[2] += 2.0  # unlike the others: only a model that learned it forgives it

    def passes() -> Iterator[tuple[torch.Tensor, list[int]]]:
        return indexed(iter(images.split(4)))

    _, out_of_fold = fit_out_of_fold(method, passes, 6, folds=3, seed=0)
    assert out_of_fold is not None and out_of_fold.details["twins"] == "derived from the kept model"
    members = [i for i in range(6) if out_of_fold.fold_of[i] == out_of_fold.fold_of[2]]
    twin = method.twin_without(members)
    assert twin is not None and method.bank is not None and twin.bank is not None
    sources = method._bank_sources
    assert sources is not None
    kept = ~torch.isin(sources, torch.tensor(members))
    assert torch.equal(twin.bank, method.bank[kept])  # the bank minus the fold's own entries
    in_sample, _ = method.score(images[2:3])
    assert float(in_sample) < 1e-5  # its own patches are in the bank
    assert out_of_fold.scores[2] > 1.0  # scored without them: far from every other image


def test_copies_of_one_image_stay_in_one_fold_unless_they_are_all_there_is() -> None:
    from vitkit.anomaly.folds import fold_assignment

    groups = [i for i in range(5) for _ in range(8)]
    fold_of = fold_assignment(40, 5, seed=0, groups=groups)
    assert all(len({fold_of[i] for i in range(40) if groups[i] == g}) == 1 for g in range(5))
    assert sorted(set(fold_of)) == [0, 1, 2, 3, 4]
    single = fold_assignment(8, 5, seed=0, groups=[0] * 8)  # one photo: its copies are folds
    assert sorted(single.count(f) for f in range(5)) == [1, 1, 2, 2, 2]


def test_dihedral_copies_are_the_eight_symmetries() -> None:
    from vitkit.anomaly.augment import with_copies

    image = torch.arange(4.0).reshape(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    copies = with_copies(image, "dihedral")
    assert copies.shape == (8, 1, 2, 2)
    assert len({tuple(c.flatten().tolist()) for c in copies}) == 8
    assert torch.equal(copies[0], image[0])
    flips = with_copies(torch.cat([image, image + 10]), "flips")
    assert flips.shape == (8, 1, 2, 2) and torch.equal(flips[4], image[0] + 10)
    assert torch.equal(flips[1], image[0].flip(-1))


@pytest.mark.slow
def test_one_normal_image_with_dihedral_copies_fits_and_flags_a_stain(tmp_path: Path) -> None:
    from tests.anomaly.test_detector import BOXES
    from tests.anomaly.woven import with_stain

    normal = tmp_path / "good"
    normal.mkdir()
    to_image(woven_texture(0)).save(normal / "only.png")
    result = run_fit(AnomalyFitConfig(data=str(normal), out=str(tmp_path / "b"),
                                      augment="dihedral"), progress=False)
    assert result.n_fit == 1 and result.details["out_of_fold"]["folds"] == 5
    assert result.details["bank_before"] == 8 * 28 * 28  # 8 copies of a 28 x 28 grid
    detector = load_detector(tmp_path / "b", "cpu")
    raw, _ = detector.raw_scores([to_image(woven_texture(1)),
                                  with_stain(woven_texture(2), BOXES[0])])
    assert raw[1] > raw[0]
    with pytest.raises(ValueError, match="augment applies to patchcore and padim"):
        AnomalyFitConfig(data=".", method="patchmean", augment="flips")


def test_synthetic_defects_change_a_small_region_or_the_whole_image() -> None:
    import random

    from vitkit.anomaly.synthetic import global_defect, local_defect, synthetic_defects

    image = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0))
    for seed in range(12):
        changed = (local_defect(image, random.Random(seed)) != image).any(dim=0)
        assert 0 < int(changed.sum()) <= (0.16 * 64) ** 2 + 1
        assert float((global_defect(image, random.Random(seed)) != image).float().mean()) > 0.5
    first = synthetic_defects(image[None].repeat(2, 1, 1, 1), [3, 4], seed=1)
    again = synthetic_defects(image[None].repeat(2, 1, 1, 1), [3, 4], seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.slow
def test_auto_scores_every_candidate_and_keeps_the_cheapest_within_one_standard_error(
        tmp_path: Path) -> None:
    normal = tmp_path / "good"
    normal.mkdir()
    for seed in range(10):
        to_image(woven_texture(seed, size=96)).save(normal / f"{seed}.png")
    config = AnomalyFitConfig(data=str(normal), out=str(tmp_path / "b"), auto=True,
                              batch_size=16)
    result = run_fit(config, progress=False)
    auto = result.details["auto"]
    quarter = {"image_size": 448, "coreset_ratio": 0.025}
    assert [t["settings"] for t in auto["candidates"]] == [
        {"image_size": None, "global_stats": False}, {"image_size": None, "global_stats": True},
        {**quarter, "global_stats": False}, {**quarter, "global_stats": True}]
    best = max(auto["candidates"], key=lambda t: t["score"])
    within = [t for t in auto["candidates"]
              if t["score"] >= best["score"] - best["standard_error"] - 1e-9]
    assert auto["chosen"] == within[0]["settings"]  # the first within one standard error
    for trial in auto["candidates"]:
        assert set(trial["synthetic_auroc"]) == {"local", "global"}
        assert trial["score"] == pytest.approx(np.mean(list(trial["synthetic_auroc"].values())),
                                               abs=1e-4)
        assert 0.0 <= trial["standard_error"] < 0.5
    stored = load_detector(tmp_path / "b", "cpu")
    assert stored.record["auto"] == auto
    assert stored.record["config"]["global_stats"] == auto["chosen"]["global_stats"]
    assert stored.input_size[0] == (auto["chosen"]["image_size"] or 224)
    root = tmp_path / "mvtec"  # the eval report shows the choice beside every candidate
    for kind, seeds in (("good", (20, 21)), ("stain", (22, 23))):
        (root / "test" / kind).mkdir(parents=True)
        for seed in seeds:
            texture = woven_texture(seed, size=96)
            if kind == "stain":
                texture[30:50, 30:50] = 0.0
            to_image(texture).save(root / "test" / kind / f"{seed}.png")
    run_eval(tmp_path / "b", root, out=tmp_path / "eval", progress=False)
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["fitted_with"]["auto"] == auto
    assert saved["fitted_with"]["method"] == "patchcore"
    page = (tmp_path / "eval" / "report.html").read_text()
    assert page.count("<tr class=\"chosen\">") == 1 and 'id="auto-candidates"' in page


def test_a_fit_with_image_statistics_also_scores_the_candidate_without_them(
        tmp_path: Path) -> None:
    """--auto fits PatchCore once per size: the candidate without image statistics is that
    fit's patch part, the same as a fit of its own (scores, synthetic AUROC, bank)."""
    from vitkit.workflows.anomaly.fit import _build_method, _fit_out_of_fold, _out_of_fold, _view

    paths = []
    for seed in range(8):
        paths.append(tmp_path / f"{seed}.png")
        to_image(woven_texture(seed, size=64)).save(paths[-1])
    plain = AnomalyFitConfig(data=str(tmp_path), out=str(tmp_path / "b"), batch_size=4)
    alone, _, _ = _build_method(plain, torch.device("cpu"))
    expected = _fit_out_of_fold(alone, paths, plain, False, synthetic_seed=0)
    both_config = plain.model_copy(update={"global_stats": True})
    both, _, _ = _build_method(both_config, torch.device("cpu"))
    fitted = _out_of_fold(both, paths, both_config, False, synthetic_seed=0)
    assert expected is not None and fitted is not None
    patch_only, outcome = _view(both, *fitted, paths, plain)
    assert not patch_only.global_stats and patch_only.global_model is None
    np.testing.assert_allclose(outcome[1], expected[1], rtol=1e-5)
    assert outcome[0]["synthetic_auroc"] == expected[0]["synthetic_auroc"]
    assert "global_stats_dim" not in outcome[0] and "global_references" not in outcome[0]
    assert patch_only.tensors().keys() == {"memory_bank"}
    assert torch.equal(patch_only.tensors()["memory_bank"], alone.tensors()["memory_bank"])
    with_global, outcome_global = _view(both, *fitted, paths, both_config)
    assert with_global is both and "global_references" in outcome_global[0]


def test_a_costlier_candidate_must_win_by_more_than_one_standard_error() -> None:
    from vitkit.anomaly.auto import one_standard_error_choice as _one_standard_error_choice

    trials = [{"score": 0.90, "standard_error": 0.02}, {"score": 0.95, "standard_error": 0.02},
              {"score": 0.96, "standard_error": 0.02}]
    assert _one_standard_error_choice(trials) == 1  # 0.95 is within 0.02 of the best 0.96
    trials[2]["standard_error"] = 0.005
    assert _one_standard_error_choice(trials) == 2
    assert _one_standard_error_choice([{"score": 0.8, "standard_error": 0.0}]) == 0


def test_auto_standard_error_counts_images_not_their_augmented_copies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --augment dihedral each of 16 images gives 8 scores (and 8 synthetic defects);
    the copies of an image are not independent of it, so the standard error of a candidate's
    score is Hanley and McNeil's with 16 normal and 16 defective images, not 128 and 128
    (which is about sqrt(8) too small)."""
    import math

    from vitkit.anomaly.folds import OutOfFold
    from vitkit.anomaly.metrics import auroc_standard_error
    from vitkit.workflows.anomaly import fit as workflow

    n_images, copies = 16, 8
    generator = torch.Generator().manual_seed(0)
    normal = torch.rand(n_images * copies, generator=generator)
    made = {"local": torch.rand(n_images * copies, generator=generator) + 0.5,
            "global": torch.rand(n_images * copies, generator=generator) + 0.2}

    class Fake:
        def setup(self, sizes: list[tuple[int, int]]) -> None:
            pass

    monkeypatch.setattr(workflow, "_build_method", lambda config, device: (Fake(), None, None))
    monkeypatch.setattr(workflow, "_image_size", lambda path: (64, 64))
    monkeypatch.setattr(workflow, "_out_of_fold", lambda *args, **kwargs: (
        {}, OutOfFold(normal, 2, [0] * len(normal), synthetic=made)))
    paths = [tmp_path / f"{i}.png" for i in range(n_images)]
    config = AnomalyFitConfig(data=str(tmp_path), method="padim", auto=True,
                              augment="dihedral")
    *_, auto = workflow._auto_fit(config, paths, torch.device("cpu"), progress=False)
    for trial in auto["candidates"]:
        aurocs = list(trial["synthetic_auroc"].values())
        expected = math.sqrt(sum(auroc_standard_error(a, n_images, n_images) ** 2
                                 for a in aurocs)) / len(aurocs)
        copies_counted = math.sqrt(sum(auroc_standard_error(a, 128, 128) ** 2
                                       for a in aurocs)) / len(aurocs)
        assert trial["standard_error"] == pytest.approx(expected, abs=1e-4)
        assert expected > 2.5 * copies_counted  # the two are far apart: the test can fail
