"""The `vitkit anomaly fit | score | eval` jobs: files, progress and bundles around the methods."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from vitkit.anomaly.augment import n_copies, with_copies
from vitkit.anomaly.config import (
    MIN_FIT_IMAGES,
    MIN_HOLDOUT_IMAGES,
    MIN_OUT_OF_FOLD_IMAGES,
    AnomalyFitConfig,
)
from vitkit.anomaly.detector import (
    AnomalyDetector,
    AnomalyScore,
    ScoreError,
    load_detector,
    resolve_device,
)
from vitkit.anomaly.features import build_feature_backbone
from vitkit.anomaly.folds import OutOfFold, fit_out_of_fold, indexed
from vitkit.anomaly.methods import DEEP_METHODS, AnomalyMethod, PatchCoreMethod, PatchMeanMethod
from vitkit.anomaly.metrics import auroc_standard_error, evaluate_anomaly
from vitkit.anomaly.overlay import heatmap_overlay, save_png_atomic
from vitkit.anomaly.threshold import (
    FEW_IMAGES,
    ScoreScale,
    f1_optimal_threshold,
    few_image_threshold,
    percentile_threshold,
)
from vitkit.bundle import BundleMeta, update_meta, write_json_atomic
from vitkit.console import make_progress
from vitkit.data import Sample, validate_samples, write_skipped_csv
from vitkit.data.files import find_images, require_images, why_unmatched
from vitkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

GOOD = "good"
DEFAULT_HOLDOUT = 0.2  # share of the normal images held out when folds=0 and none is given
MASK_SUFFIX = "_mask"


@dataclass
class FitResult:
    """What `vitkit anomaly fit` did (its --json output)."""

    bundle: str
    method: str
    model: str | None
    n_fit: int
    n_holdout: int
    n_skipped: int
    threshold: float
    fit_seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normal_images(data: str) -> Path:
    """The folder of normal images: ``DATA/train/good`` for an MVTec-style root, else DATA."""
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"{data} is not a folder. Give a folder of normal (good) images, or an "
                        "MVTec-style root with train/good/.")
    mvtec = root / "train" / GOOD
    return mvtec if mvtec.is_dir() else root


def run_fit(config: AnomalyFitConfig, progress: bool = True) -> FitResult:
    """Learns normal from ``config.data``, sets the threshold, writes a bundle.

    The threshold comes from out-of-fold scores (``config.folds``; every image learned, each
    scored by a twin that did not learn it, see :mod:`vitkit.anomaly.folds`), or with
    ``folds=0`` from a held-out share of the images that the model never learns.

    Raises:
        DataError: Too few usable images, or none at all.
    """
    started = time.perf_counter()
    folder = normal_images(config.data)
    paths, _ = find_images([str(folder)])
    report = validate_samples([Sample(p, GOOD, None) for p in paths], progress=progress)
    usable = [s.path for s in report.usable]
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    auto: dict[str, Any] | None = None
    fitted = None
    if config.folds:
        if config.augment == "none":
            check_enough_normals(usable, MIN_OUT_OF_FOLD_IMAGES, len(report.skipped), folder,
                                 hint=" — or, with a single image of a part that looks the "
                                 "same mirrored and turned, --augment dihedral")
        else:  # one image is enough: its copies can be the folds
            check_enough_normals(usable, 1, len(report.skipped), folder)
    if config.auto:
        config, method, model, meta, fitted, auto = _auto_fit(config, usable, device, progress)
    else:
        method, model, meta = _build_method(config, device)
        if config.folds:
            method.setup([_image_size(p) for p in usable])
            fitted = _fit_out_of_fold(method, usable, config, progress)
    if fitted is None:  # hold-out split: asked for, or the twins do not fit in memory
        fitted = _fit_holdout(method, usable, config, len(report.skipped), folder, progress)
    details, scores, n_fit, n_holdout, source = fitted
    # Independent images behind the scores: the held-out ones, or every learned one (the
    # augmented copies of an image are not independent of it).
    threshold = few_image_threshold(scores, config.percentile,
                                    n_images=n_holdout if n_holdout else n_fit)
    if threshold > percentile_threshold(scores, config.percentile):
        source += (f", raised to the {config.percentile:g}% prediction bound of a log-normal "
                   f"fitted to them (fewer than {FEW_IMAGES} images)")
    scale = ScoreScale.from_normal_scores(scores, threshold)
    fit_seconds = time.perf_counter() - started
    record = {
        "layers": getattr(model, "layers", None),
        "data": str(folder),
        "seed": config.seed,
        "threshold_source": f"percentile {config.percentile:g} of {source}",
        "fit": {"n_fit": n_fit, "n_holdout": n_holdout,
                "n_skipped": len(report.skipped), "seconds": round(fit_seconds, 3),
                "threshold_scores": [round(float(s), 6) for s in scores], **details},
        "config": config.model_dump(mode="json"),
    }
    if auto is not None:
        record["auto"] = auto
        details["auto"] = auto
    detector = AnomalyDetector(method, threshold, scale, record)
    out = Path(config.out)
    detector.save(out, meta, model)
    if report.skipped:
        write_skipped_csv(report.skipped, out / "skipped.csv")
    return FitResult(str(out), method.name, None if method.name == "patchmean" else config.model,
                     n_fit, n_holdout, len(report.skipped), threshold,
                     round(fit_seconds, 3), details)


FitOutcome = tuple[dict[str, Any], np.ndarray, int, int, str]
"""(fit details, the normal scores that set the threshold, images learned, images held out,
where the scores came from)."""


def _fit_out_of_fold(method: AnomalyMethod, usable: list[Path], config: AnomalyFitConfig,
                     progress: bool, synthetic_seed: int | None = None) -> FitOutcome | None:
    fitted = _out_of_fold(method, usable, config, progress, synthetic_seed)
    return None if fitted is None else _outcome(*fitted, usable, config)


def _out_of_fold(method: AnomalyMethod, usable: list[Path], config: AnomalyFitConfig,
                 progress: bool, synthetic_seed: int | None = None
                 ) -> tuple[dict[str, Any], OutOfFold] | None:
    copies = n_copies(config.augment)

    def passes() -> Iterator[tuple[torch.Tensor, list[int]]]:
        return indexed(with_copies(torch.stack([method.prepare(image) for image in batch]),
                                   config.augment)
                       for batch in _batches(usable, config.batch_size))

    n_images = len(usable) * copies
    hooks: dict[str, Any] = {}
    with make_progress(progress) as bar:
        if bar is not None:
            learn = bar.add_task("Learning normal", total=n_images, stats="")
            finish = bar.add_task(_finish_message(method.name), total=None, stats="")
            score = bar.add_task("Scoring each fold with a model that did not learn it",
                                 total=n_images, stats="")
            hooks = {"on_batch": lambda n: bar.advance(learn, n),
                     "finish_progress": lambda done, total: bar.update(
                         finish, completed=done, total=total),
                     "on_score": lambda n: bar.advance(score, n)}
        groups = [i for i in range(len(usable)) for _ in range(copies)]
        details, out_of_fold = fit_out_of_fold(method, passes, n_images, config.folds,
                                               config.seed, groups=groups,
                                               synthetic_seed=synthetic_seed, **hooks)
    if out_of_fold is None:
        return None
    return details, out_of_fold


def _outcome(details: dict[str, Any], out_of_fold: OutOfFold, usable: list[Path],
             config: AnomalyFitConfig) -> FitOutcome:
    copies = n_copies(config.augment)
    details = {**details, "out_of_fold": {"folds": out_of_fold.folds, **out_of_fold.details}}
    if out_of_fold.synthetic:
        details["synthetic_auroc"] = {
            kind: round(float(roc_auc_score(
                [0] * len(out_of_fold.scores) + [1] * len(made),
                np.concatenate([out_of_fold.scores.numpy(), made.numpy()]))), 4)
            for kind, made in out_of_fold.synthetic.items()}
    copied = f", {copies} copies each" if copies > 1 else ""
    grouping = ("the copies of the one image are the folds" if len(usable) == 1
                else "each scored by a model fitted on the others")
    source = (f"the out-of-fold scores of all {len(usable)} normal images{copied} "
              f"({out_of_fold.folds} folds, {grouping})")
    return details, out_of_fold.scores.numpy(), len(usable), 0, source


AUTO_RECIPE = ("each normal image gives a local synthetic defect (a patch cut and pasted, a "
               "scar, noise or a flat colour) and a global one (lower contrast, blur, a finer "
               "texture, a colour cast), scored by the model that did not learn the image; "
               "a candidate's score is the mean of its local and global AUROC against the "
               "out-of-fold normal scores")


def auto_candidates(config: AnomalyFitConfig) -> list[dict[str, Any]]:
    """The settings `--auto` tries: input size 224 / 448 px and, for PatchCore, the image
    statistics off / on (the choices that decided past figures; see the README)."""
    if config.method == "patchcore":
        # At 448 px the grid has four times the patches: a quarter of the coreset share keeps
        # the bank, the coreset selection and the scoring at 224 px's size (the share barely
        # moved AUROC in the demo, 1-10%; at a 10% share deeppcb's 448-px coreset alone took
        # many minutes).
        large = {"image_size": 448, "coreset_ratio": config.coreset_ratio / 4}
        return [{"image_size": None, "global_stats": False},
                {"image_size": None, "global_stats": True},
                {**large, "global_stats": False}, {**large, "global_stats": True}]
    if config.method == "padim":
        return [{"image_size": None}, {"image_size": 448}]
    raise ConfigError("--auto chooses settings of patchcore and padim; patchmean has its own "
                      "(--patch-size, --resolution).")


def _auto_fit(config: AnomalyFitConfig, usable: list[Path], device: torch.device,
              progress: bool) -> tuple[AnomalyFitConfig, AnomalyMethod,
                                       torch.nn.Module | None, BundleMeta, FitOutcome,
                                       dict[str, Any]]:
    if not config.folds:
        raise ConfigError("--auto scores candidates out of fold: leave --folds at 2 or more.")
    fitted_candidates: list[tuple[dict[str, Any], AnomalyFitConfig, AnomalyMethod, Any,
                                  BundleMeta, FitOutcome]] = []
    trials = []
    for number, group in enumerate(_shared_fits(auto_candidates(config))):
        # The settings of one fit: image statistics on when any candidate of the group
        # wants them (the others are the same fit with the patch part alone).
        fit_settings = {**group[0], **({"global_stats": True} if len(group) > 1 else {})}
        candidate = config.model_copy(update=fit_settings)
        started = time.perf_counter()
        method, model, meta = _build_method(candidate, device)
        method.setup([_image_size(p) for p in usable])
        fitted = _out_of_fold(method, usable, candidate, progress, synthetic_seed=config.seed)
        if fitted is None:
            continue
        seconds = round(time.perf_counter() - started, 2)
        for settings in group:
            view = config.model_copy(update=settings)
            chosen_method, outcome = _view(method, *fitted, usable, view)
            synthetic = outcome[0]["synthetic_auroc"]
            score = float(np.mean(list(synthetic.values())))
            error = _auto_standard_error(list(synthetic.values()), len(usable))
            trials.append({"settings": dict(settings), "synthetic_auroc": synthetic,
                           "score": round(score, 4), "standard_error": round(error, 4),
                           "fit": number, "seconds": seconds})
            fitted_candidates.append((dict(settings), view, chosen_method, model, meta, outcome))
    if not trials:
        raise DataError("no --auto candidate could be scored out of fold (too little memory "
                        "for the fold models); fit without --auto.")
    choice = _one_standard_error_choice(trials)
    settings, chosen, method, model, meta, outcome = fitted_candidates[choice]
    return chosen, method, model, meta, outcome, {
        "chosen": settings, "candidates": trials, "recipe": AUTO_RECIPE, "rule": AUTO_RULE}


def _auto_standard_error(aurocs: Sequence[float], n_images: int) -> float:
    """The standard error of a candidate's score, the mean of its synthetic AUROCs (taken as
    independent): each AUROC is ``n_images`` normal against ``n_images`` synthetic defects.

    ``n_images`` counts the independent images: with ``--augment`` every image also gives
    its copies' scores and their defects, but a copy repeats its image (same part, same
    texture), so counting the 8 dihedral copies as images made the error about sqrt(8) too
    small and the one-standard-error rule too ready to pick a costlier candidate."""
    return math.sqrt(sum(auroc_standard_error(a, n_images, n_images) ** 2
                         for a in aurocs)) / len(aurocs)


AUTO_RULE = ("the first candidate, in the order tried (smaller, then with image statistics), "
             "whose score is within one standard error of the best score")


def _one_standard_error_choice(trials: list[dict[str, Any]]) -> int:
    """The one-standard-error rule: a later candidate costs more and can fail in ways the
    synthetic defects do not show (image statistics of new parts that differ from the
    normal images as a whole), so it must win by more than the noise of its score."""
    best = max(trials, key=lambda t: t["score"])
    bar = best["score"] - best["standard_error"]
    return next(i for i, t in enumerate(trials) if t["score"] >= bar - 1e-9)


def _shared_fits(candidates: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Candidates grouped by the fit they can share: PatchCore with and without image
    statistics differ only in the global part, so one fit with them on scores both."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for settings in candidates:
        key = repr(sorted((k, v) for k, v in settings.items() if k != "global_stats"))
        groups.setdefault(key, []).append(settings)
    return list(groups.values())


def _view(method: AnomalyMethod, details: dict[str, Any], out_of_fold: OutOfFold,
          usable: list[Path], config: AnomalyFitConfig) -> tuple[AnomalyMethod, FitOutcome]:
    """The fitted method as ``config`` wants it: as fitted, or (a PatchCore fitted with image
    statistics, asked for without) with the patch part alone, out-of-fold scores included."""
    if not isinstance(method, PatchCoreMethod) or config.global_stats or \
            not method.global_stats:
        return method, _outcome(details, out_of_fold, usable, config)
    if out_of_fold.parts is None:
        raise RuntimeError("the out-of-fold parts were not kept")
    patch_only = dataclasses.replace(
        out_of_fold, scores=out_of_fold.parts[:, 0], parts=out_of_fold.parts[:, :1],
        synthetic={kind: rows[:, 0] for kind, rows in out_of_fold.synthetic_parts.items()},
        synthetic_parts={kind: rows[:, :1]
                         for kind, rows in out_of_fold.synthetic_parts.items()})
    global_keys = {"global_stats_dim", "global_references", "global_weight"}
    kept = {key: value for key, value in details.items() if key not in global_keys}
    return method.without_global_stats(), _outcome(kept, patch_only, usable, config)


def _fit_holdout(method: AnomalyMethod, usable: list[Path], config: AnomalyFitConfig,
                 n_skipped: int, folder: Path, progress: bool) -> FitOutcome:
    share = config.holdout if config.holdout is not None else DEFAULT_HOLDOUT
    fit_paths, holdout_paths = split_normals(usable, share, config.seed,
                                             n_skipped=n_skipped, folder=folder)
    method.setup([_image_size(p) for p in fit_paths])
    with make_progress(progress) as bar:
        task = bar.add_task("Learning normal", total=len(fit_paths), stats="") if bar else None
        for batch in _batches(fit_paths, config.batch_size):
            method.add_normal(with_copies(torch.stack([method.prepare(image)
                                                       for image in batch]), config.augment))
            if bar is not None and task is not None:
                bar.advance(task, len(batch))
    with make_progress(progress) as bar:
        task = bar.add_task(_finish_message(method.name), total=None, stats="") if bar else None
        finish_started = time.perf_counter()
        details = method.finish_fit(_reporter(bar, task))
        details["finish_seconds"] = round(time.perf_counter() - finish_started, 3)
        if bar is not None and task is not None and bar.tasks[0].total is None:
            bar.update(task, total=1, completed=1)  # a step that reported no progress: done
    with make_progress(progress and method.calibrates) as bar:
        task = bar.add_task("Calibrating on held-out", total=len(holdout_paths),
                            stats="") if bar else None
        details.update(method.calibrate(
            _advancing(torch.stack([method.prepare(image) for image in batch]), len(batch),
                       bar, task)
            for batch in _batches(holdout_paths, config.batch_size)))
    provisional = AnomalyDetector(method, threshold=0.5, scale=ScoreScale(0.0, 0.5, 1.0))
    scores = _raw_scores(provisional, holdout_paths, config.batch_size, progress)
    if config.folds:
        details["out_of_fold"] = {"folds": 0, "why_not": "the fold models would not fit in "
                                  "memory; held images out instead"}
    return (details, scores, len(fit_paths), len(holdout_paths),
            f"{len(holdout_paths)} held-out normal images")


def check_enough_normals(paths: Sequence[Path], needed: int, n_skipped: int = 0,
                         folder: Path | None = None, why: str = "", hint: str = "") -> None:
    """A clear error when fewer than ``needed`` usable normal images were found; ``why`` says
    what they are for, ``hint`` what else the user could do."""
    if len(paths) >= needed:
        return
    skipped = f" ({n_skipped} more were skipped as unreadable)" if n_skipped else ""
    where = f" in {folder}" if folder else ""
    raise DataError(
        f"anomaly fit needs at least {needed} usable normal images{why}; found "
        f"{len(paths)}{where}{skipped}. Add more images of good parts — a few dozen give "
        f"a much more reliable threshold{hint}.")


def split_normals(paths: Sequence[Path], holdout: float, seed: int, n_skipped: int = 0,
                  folder: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Seeded split of the normal images into the ones to learn and the held-out ones.

    Raises:
        DataError: Fewer than ``MIN_FIT_IMAGES + MIN_HOLDOUT_IMAGES`` usable images.
    """
    check_enough_normals(paths, MIN_FIT_IMAGES + MIN_HOLDOUT_IMAGES, n_skipped, folder,
                         why=f" ({MIN_FIT_IMAGES} to learn from and {MIN_HOLDOUT_IMAGES} held "
                         "out to set the threshold)")
    order = list(paths)
    random.Random(seed).shuffle(order)
    n_holdout = max(MIN_HOLDOUT_IMAGES, round(holdout * len(order)))
    n_holdout = min(n_holdout, len(order) - MIN_FIT_IMAGES)
    return sorted(order[n_holdout:]), sorted(order[:n_holdout])


def _build_method(config: AnomalyFitConfig, device: torch.device
                  ) -> tuple[AnomalyMethod, torch.nn.Module | None, BundleMeta]:
    if config.method == PatchMeanMethod.name:
        method = PatchMeanMethod(config.patch_size, config.resolution)
        meta = BundleMeta(backbone={}, labels=[], preprocessing={"kind": "patchmean"})
        return method, None, meta
    backbone, layers = build_feature_backbone(config.model, config.weights, config.method,
                                              config.layers, config.image_size)
    extractor = backbone.extractor
    deep: AnomalyMethod
    if config.method == "patchcore":
        deep = DEEP_METHODS["patchcore"](
            extractor, backbone.preprocessing, device, coreset_ratio=config.coreset_ratio,
            projection_dim=config.projection_dim, num_neighbors=config.num_neighbors,
            seed=config.seed, global_stats=config.global_stats,  # type: ignore[call-arg]
            image_score=config.image_score)
    else:
        deep = DEEP_METHODS["padim"](extractor, backbone.preprocessing, device,
                                     channels=config.padim_channels, seed=config.seed)  # type: ignore[call-arg]
    meta = BundleMeta(backbone=backbone.spec.to_dict(), labels=[],
                      preprocessing=backbone.preprocessing.model_dump(mode="json"))
    return deep, extractor, meta


def _finish_message(method: str) -> str:
    return {"patchcore": "Selecting the memory-bank coreset",
            "padim": "Inverting the per-position covariances"}.get(method, "Fitting")


def _reporter(bar: Progress | None, task: TaskID | None) -> Callable[[int, int], None] | None:
    """``progress(done, total)`` for a long step, shown on ``task`` of ``bar`` (None without
    a bar)."""
    if bar is None or task is None:
        return None
    return lambda done, total: bar.update(task, completed=done, total=total)


def _advancing(batch: torch.Tensor, size: int, bar: Any, task: Any) -> torch.Tensor:
    if bar is not None and task is not None:
        bar.advance(task, size)
    return batch


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def _batches(paths: Sequence[Path], batch_size: int) -> Iterator[list[Image.Image]]:
    from vitkit.data import load_rgb

    for start in range(0, len(paths), batch_size):
        yield [load_rgb(p)[0] for p in paths[start:start + batch_size]]


def _raw_scores(detector: AnomalyDetector, paths: Sequence[Path], batch_size: int,
                progress: bool) -> np.ndarray:
    scores: list[float] = []
    with make_progress(progress) as bar:
        task = bar.add_task("Scoring held-out", total=len(paths), stats="") if bar else None
        for batch in _batches(paths, batch_size):
            raw, _ = detector.raw_scores(batch)
            scores.extend(raw.tolist())
            if bar is not None and task is not None:
                bar.advance(task, len(batch))
    return np.asarray(scores, dtype=np.float64)


# --------------------------------------------------------------------------- score

def run_score(bundle: Path, inputs: Sequence[str], maps_dir: Path | None = None,
              batch_size: int = 16, device: str = "auto", progress: bool = True,
              variant: str | None = None) -> list[AnomalyScore | ScoreError]:
    """Scores images; with ``maps_dir`` also writes one heat-map overlay PNG per image.
    ``variant`` runs an exported feature extractor (`vitkit anomaly export`)."""
    files, unmatched = find_images(inputs)
    require_images(files, unmatched)  # before the detector loads
    detector = load_detector(bundle, device, variant=variant)
    results: list[AnomalyScore | ScoreError] = [
        ScoreError(item, why_unmatched(item)) for item in unmatched]
    names = _unique_names(files)
    with make_progress(progress and len(files) > batch_size) as bar:
        task = bar.add_task("Scoring", total=len(files), stats="") if bar else None
        for result, image in detector.score_paths(files, batch_size, with_maps=maps_dir is not None,
                                                  keep_images=maps_dir is not None):
            if maps_dir is not None and isinstance(result, AnomalyScore) and image is not None:
                assert result.map is not None
                overlay = heatmap_overlay(image, result.map, 0.0, 1.0, threshold=0.5)
                save_png_atomic(overlay, maps_dir / names[Path(result.path)])
                result.map = None
            results.append(result)
            if bar is not None and task is not None:
                bar.advance(task)
    return results


def _unique_names(paths: Sequence[Path]) -> dict[Path, str]:
    """``stem.png`` per image, prefixed with parent folders only where stems collide."""
    names: dict[Path, str] = {}
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    for path in paths:
        if counts[path.stem] == 1:
            names[path] = f"{path.stem}.png"
        else:
            names[path] = f"{path.parent.name}_{path.stem}.png"
    seen: set[str] = set()
    for path, name in names.items():
        candidate, i = name, 1
        while candidate in seen:
            candidate = f"{Path(name).stem}_{i}.png"
            i += 1
        seen.add(candidate)
        names[path] = candidate
    return names


# --------------------------------------------------------------------------- eval

@dataclass
class TestImage:
    """One labelled test image of an MVTec-style folder."""

    path: Path
    defect: str  # "good" for normal images
    mask: Path | None


def mvtec_test_images(root: Path) -> list[TestImage]:
    """``ROOT/test/<type>/*`` (or ``ROOT/<type>/*``) with masks from ``ROOT/ground_truth``.

    Raises:
        DataError: No ``good`` folder or no defect folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give an MVTec-style root with test/good/ and "
                        "test/<defect>/ folders (optional ground_truth/<defect>/*_mask.png).")
    test = root / "test" if (root / "test").is_dir() else root
    types = sorted(p.name for p in test.iterdir() if p.is_dir() and not p.name.startswith("."))
    if GOOD not in types or len(types) < 2:
        raise DataError(
            f"{test} needs a '{GOOD}' folder and at least one defect folder (found: "
            f"{', '.join(types) or 'no folders'}). Layout: ROOT/test/good/*.png, "
            "ROOT/test/<defect>/*.png, optional ROOT/ground_truth/<defect>/<name>_mask.png."
        )
    images: list[TestImage] = []
    for defect in types:
        files, _ = find_images([str(test / defect)])
        for path in files:
            mask = root / "ground_truth" / defect / f"{path.stem}{MASK_SUFFIX}.png"
            images.append(TestImage(path, defect, mask if mask.is_file() else None))
    return images


def run_eval(bundle: Path, data_root: Path, out: Path | None = None, threshold: str = "stored",
             batch_size: int = 16, device: str = "auto", max_map_side: int = 512,
             report: bool = True, progress: bool = True, variant: str | None = None
             ) -> dict[str, Any]:
    """Scores an MVTec-style test set and measures image and pixel metrics.

    Args:
        bundle: The anomaly bundle.
        data_root: MVTec-style root (see :func:`mvtec_test_images`).
        out: Folder for eval.json, overlays and report.html (default BUNDLE/eval).
        threshold: ``stored`` keeps the bundle's threshold; ``f1`` sets the F1-optimal
            threshold on this data and stores it in the bundle.
        max_map_side: Pixel metrics are computed on maps and masks resized to this long side.
        report: Write overlays and the HTML report.
        variant: An exported feature extractor to score with (`vitkit anomaly export`).
    """
    detector = load_detector(bundle, device, variant=variant)
    tests = mvtec_test_images(data_root)
    by_path = {t.path: t for t in tests}
    scored: list[tuple[TestImage, AnomalyScore]] = []
    skipped: list[ScoreError] = []
    with make_progress(progress) as bar:
        task = bar.add_task("Scoring test images", total=len(tests), stats="") if bar else None
        for result, image in _score_for_eval(detector, [t.path for t in tests], batch_size,
                                             max_map_side):
            if isinstance(result, ScoreError):
                skipped.append(result)
            else:
                scored.append((by_path[Path(result.path)], result))
            if bar is not None and task is not None:
                bar.advance(task)
            del image
    if not any(t.defect == GOOD for t, _ in scored) or all(t.defect == GOOD for t, _ in scored):
        raise DataError(f"{data_root}: need readable normal and anomalous test images to "
                        f"evaluate ({len(skipped)} were unreadable).")
    raw = np.array([r.raw_score for _, r in scored])
    defects = [t.defect for t, _ in scored]
    if threshold == "f1":
        labels = np.array([d != GOOD for d in defects])
        new_threshold, _ = f1_optimal_threshold(raw, labels)
        _adopt_threshold(bundle, detector, new_threshold, f"F1-optimal on {data_root}")
    has_masks = any(t.mask is not None for t, _ in scored)
    maps: list[np.ndarray] | None = None
    masks: list[np.ndarray | None] | None = None
    if has_masks:
        maps, masks = [], []
        for test_image, score in scored:
            if score.map is None:  # _score_for_eval asks for maps: a bug if one is missing
                raise RuntimeError(f"{test_image.path} was scored without a map")
            maps.append(score.map)
            masks.append(_read_mask(test_image, score.map.shape))
    evaluation = evaluate_anomaly(raw, defects, detector.threshold, maps=maps, masks=masks)
    metrics = evaluation.to_dict()
    out = Path(out) if out is not None else Path(bundle) / "eval"
    details = {**metrics, "data": str(data_root), "n_skipped": len(skipped),
               "skipped": [s.to_dict() for s in skipped],
               "threshold_source": detector.record.get("threshold_source"),
               "fitted_with": _fitted_with(detector.record)}
    write_json_atomic(out / "eval.json", details)
    if report:
        from vitkit.report.anomaly import write_anomaly_report  # matplotlib: only when asked

        entries = [(t, r) for t, r in scored]
        write_anomaly_report(out, details, _report_entries(detector, entries, max_map_side))
    return metrics


def _fitted_with(record: dict[str, Any]) -> dict[str, Any]:
    """The settings the bundle was fitted with, and --auto's candidates when it chose them."""
    config = record.get("config") or {}
    keys = ("method", "model", "image_size", "layers", "global_stats", "image_score",
            "coreset_ratio", "folds", "augment")
    fitted = {key: config[key] for key in keys if key in config}
    if "auto" in record:
        fitted["auto"] = record["auto"]
    return fitted


def _score_for_eval(detector: AnomalyDetector, paths: Sequence[Path], batch_size: int,
                    max_map_side: int
                    ) -> Iterator[tuple[AnomalyScore | ScoreError, Image.Image | None]]:
    """``score_paths`` with maps capped at ``max_map_side`` to bound memory and in raw score
    units: the normalised maps saturate at 1, and ties there would understate pixel AUROC and
    PRO (and make them depend on the hold-out set that set the scale)."""
    return detector.score_paths(paths, batch_size, with_maps=True, max_map_side=max_map_side,
                                normalized_maps=False)


def _read_mask(test: TestImage, shape: tuple[int, ...]) -> np.ndarray:
    """The ground-truth mask at the map's (H, W); all-False for images without one."""
    height, width = shape
    if test.mask is None:
        return np.zeros((height, width), dtype=bool)
    with Image.open(test.mask) as mask:
        resized = mask.convert("L").resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(resized) > 127


def _adopt_threshold(bundle: Path, detector: AnomalyDetector, threshold: float,
                     source: str) -> None:
    low = detector.scale.low
    detector.threshold = threshold
    detector.scale = ScoreScale(low=min(low, threshold), threshold=threshold,
                                high=threshold + max(threshold - low, 1e-12))
    record = {**detector.record, "threshold": threshold, "scale": detector.scale.to_dict(),
              "threshold_source": source}
    detector.record = record
    update_meta(bundle, anomaly=record)


def _report_entries(detector: AnomalyDetector, scored: Sequence[tuple[TestImage, AnomalyScore]],
                    max_side: int) -> list[dict[str, Any]]:
    """Report rows, worst first, each with an overlay PNG of the normalised map (the verdicts
    carry raw maps, see ``_score_for_eval``)."""
    from vitkit.anomaly.overlay import png_bytes
    from vitkit.data import load_rgb

    rows = []
    for test, verdict in sorted(scored, key=lambda item: -item[1].raw_score):
        image, _ = load_rgb(test.path)
        image.thumbnail((max_side, max_side))
        assert verdict.map is not None
        overlay = heatmap_overlay(image, detector.scale.normalize(verdict.map), 0.0, 1.0,
                                  threshold=0.5)
        overlay.thumbnail((256, 256))
        rows.append({"path": str(test.path), "defect": test.defect, "score": verdict.score,
                     "raw_score": verdict.raw_score, "label": verdict.label,
                     "overlay_png": png_bytes(overlay)})
    return rows
