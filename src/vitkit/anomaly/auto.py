"""What `vitkit anomaly fit --auto` tries and how it chooses: the candidate settings, the
fits they can share, each candidate's score and its noise, and the one-standard-error rule.

The fitting itself (images, progress, out-of-fold twins) is the workflow's; this module only
decides, from the synthetic-defect AUROCs each candidate earned.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from vitkit.anomaly.config import AnomalyFitConfig
from vitkit.anomaly.folds import OutOfFold
from vitkit.anomaly.metrics import auroc_standard_error
from vitkit.errors import ConfigError

AUTO_RECIPE = ("each normal image gives a local synthetic defect (a patch cut and pasted, a "
               "scar, noise or a flat colour) and a global one (lower contrast, blur, a finer "
               "texture, a colour cast), scored by the model that did not learn the image; "
               "a candidate's score is the mean of its local and global AUROC against the "
               "out-of-fold normal scores")


def auto_candidates(config: AnomalyFitConfig) -> list[dict[str, Any]]:
    """The settings `--auto` tries: input size 224 / 448 px and, for PatchCore, the image
    statistics off / on (the choices that decided past figures: ``bench/anomaly_auto.py``)."""
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


def auto_standard_error(aurocs: Sequence[float], n_images: int) -> float:
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


def one_standard_error_choice(trials: list[dict[str, Any]]) -> int:
    """The one-standard-error rule: a later candidate costs more and can fail in ways the
    synthetic defects do not show (image statistics of new parts that differ from the
    normal images as a whole), so it must win by more than the noise of its score."""
    best = max(trials, key=lambda t: t["score"])
    bar = best["score"] - best["standard_error"]
    return next(i for i, t in enumerate(trials) if t["score"] >= bar - 1e-9)


def shared_fits(candidates: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Candidates grouped by the fit they can share: PatchCore with and without image
    statistics differ only in the global part, so one fit with them on scores both."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for settings in candidates:
        key = repr(sorted((k, v) for k, v in settings.items() if k != "global_stats"))
        groups.setdefault(key, []).append(settings)
    return list(groups.values())


GLOBAL_DETAILS = frozenset({"global_stats_dim", "global_references", "global_weight"})
"""The fit details that belong to PatchCore's image statistics (dropped with them)."""


def patch_part_only(out_of_fold: OutOfFold) -> OutOfFold:
    """The out-of-fold scores of a PatchCore fitted with image statistics as they would be
    without them: the patch part alone, for the normal images and the synthetic defects."""
    if out_of_fold.parts is None:
        raise RuntimeError("the out-of-fold parts were not kept")
    return dataclasses.replace(
        out_of_fold, scores=out_of_fold.parts[:, 0], parts=out_of_fold.parts[:, :1],
        synthetic={kind: rows[:, 0] for kind, rows in out_of_fold.synthetic_parts.items()},
        synthetic_parts={kind: rows[:, :1]
                         for kind, rows in out_of_fold.synthetic_parts.items()})
