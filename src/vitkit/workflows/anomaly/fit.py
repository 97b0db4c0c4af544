"""`vitkit anomaly fit`: learns normal from a folder, sets the threshold, writes a bundle.

The threshold comes from out-of-fold scores or held-out images; ``--auto`` fits the
candidates of :mod:`vitkit.anomaly.auto` and keeps the one its rule chooses.
"""

from __future__ import annotations

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
from vitkit.anomaly.auto import (
    AUTO_RECIPE,
    AUTO_RULE,
    GLOBAL_DETAILS,
    auto_candidates,
    auto_standard_error,
    one_standard_error_choice,
    patch_part_only,
    shared_fits,
)
from vitkit.anomaly.config import (
    MIN_FIT_IMAGES,
    MIN_HOLDOUT_IMAGES,
    MIN_OUT_OF_FOLD_IMAGES,
    AnomalyFitConfig,
)
from vitkit.anomaly.detector import AnomalyDetector, resolve_device
from vitkit.anomaly.features import build_feature_backbone
from vitkit.anomaly.folds import OutOfFold, fit_out_of_fold, indexed
from vitkit.anomaly.methods import DEEP_METHODS, AnomalyMethod, PatchCoreMethod, PatchMeanMethod
from vitkit.anomaly.threshold import (
    FEW_IMAGES,
    ScoreScale,
    few_image_threshold,
    percentile_threshold,
)
from vitkit.bundle import BundleMeta
from vitkit.console import make_progress
from vitkit.data import Sample, load_rgb, validate_samples, write_skipped_csv
from vitkit.data.files import find_images
from vitkit.data.mvtec import GOOD, normal_images
from vitkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

DEFAULT_HOLDOUT = 0.2  # share of the normal images held out when folds=0 and none is given


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


def _auto_fit(config: AnomalyFitConfig, usable: list[Path], device: torch.device,
              progress: bool) -> tuple[AnomalyFitConfig, AnomalyMethod,
                                       torch.nn.Module | None, BundleMeta, FitOutcome,
                                       dict[str, Any]]:
    if not config.folds:
        raise ConfigError("--auto scores candidates out of fold: leave --folds at 2 or more.")
    fitted_candidates: list[tuple[dict[str, Any], AnomalyFitConfig, AnomalyMethod, Any,
                                  BundleMeta, FitOutcome]] = []
    trials = []
    for number, group in enumerate(shared_fits(auto_candidates(config))):
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
            error = auto_standard_error(list(synthetic.values()), len(usable))
            trials.append({"settings": dict(settings), "synthetic_auroc": synthetic,
                           "score": round(score, 4), "standard_error": round(error, 4),
                           "fit": number, "seconds": seconds})
            fitted_candidates.append((dict(settings), view, chosen_method, model, meta, outcome))
    if not trials:
        raise DataError("no --auto candidate could be scored out of fold (too little memory "
                        "for the fold models); fit without --auto.")
    choice = one_standard_error_choice(trials)
    settings, chosen, method, model, meta, outcome = fitted_candidates[choice]
    return chosen, method, model, meta, outcome, {
        "chosen": settings, "candidates": trials, "recipe": AUTO_RECIPE, "rule": AUTO_RULE}


def _view(method: AnomalyMethod, details: dict[str, Any], out_of_fold: OutOfFold,
          usable: list[Path], config: AnomalyFitConfig) -> tuple[AnomalyMethod, FitOutcome]:
    """The fitted method as ``config`` wants it: as fitted, or (a PatchCore fitted with image
    statistics, asked for without) with the patch part alone, out-of-fold scores included."""
    if not isinstance(method, PatchCoreMethod) or config.global_stats or \
            not method.global_stats:
        return method, _outcome(details, out_of_fold, usable, config)
    kept = {key: value for key, value in details.items() if key not in GLOBAL_DETAILS}
    return method.without_global_stats(), _outcome(kept, patch_part_only(out_of_fold), usable,
                                                   config)


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
