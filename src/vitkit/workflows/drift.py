"""`vitkit drift BUNDLE NEW_DATA`: is a batch of new images still like the training data?

The reference is the sample of training features (and the training images' predicted-class
counts) stored in the bundle by the OOD fit, so the training images are not needed again; a
bundle without one falls back to its training data, when that is still where it was. The
tests and the verdict rule are in :mod:`vitkit.ood.drift`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vitkit.compress.reference import reference_images
from vitkit.errors import BundleError, DataError
from vitkit.ood.detector import DriftReference, load_drift_reference
from vitkit.ood.drift import (
    DEFAULT_PERMUTATIONS,
    class_mix_test,
    mmd_permutation_test,
    verdict,
)
from vitkit.predictor.embed import embed_paths
from vitkit.predictor.predict import Predictor, expand_paths, load
from vitkit.predictor.variants import REFERENCE_VARIANT
from vitkit.workflows.ood import drift_reference, embed_labelled


def run_drift(bundle: Path, new_data: str, batch_size: int = 32, progress: bool = True,
              permutations: int = DEFAULT_PERMUTATIONS, alpha: float = 0.01, seed: int = 0
              ) -> dict[str, Any]:
    """The `vitkit drift --json` document (:class:`vitkit.ood.drift.DriftReport`)."""
    predictor = load(bundle, variant=REFERENCE_VARIANT)
    paths, missing = expand_paths([new_data], dicom=True)
    if missing or not paths:
        raise DataError(f"{new_data} holds no images; give a folder (searched recursively), "
                        "an image file or a glob.")
    reference, reference_source = load_drift_reference(bundle), "bundle (OOD fit)"
    if reference is None:
        reference, reference_source = _reference_from_training_data(predictor, batch_size,
                                                                    progress, seed)
    new = embed_paths(predictor, paths, batch_size, progress, "features (new)")
    if len(new) < 2:
        raise DataError(f"fewer than 2 readable images in {new_data}; a drift check needs a "
                        "batch of images.")
    features = mmd_permutation_test(reference.features, new.features, permutations, seed=seed)
    counts = torch.bincount(new.logits.argmax(dim=1), minlength=len(predictor.labels))
    mix = class_mix_test(counts.tolist(), reference.class_counts.tolist(), predictor.labels)
    ood = None
    detector = predictor.ood
    if detector is not None:
        flagged = int(detector.is_unknown(detector.score(new.features, new.logits)).sum())
        ood = (flagged, detector.expected_ood_share)
    report = verdict(len(new), features, mix, ood, alpha, extra={
        "reference": {"source": reference_source, "rows": len(reference.features)},
        "ood_method": None if detector is None else detector.method,
        "skipped": [s.to_dict() for s in new.skipped],
    })
    return report.to_dict()


def _reference_from_training_data(predictor: Predictor, batch_size: int, progress: bool, seed: int
                                  ) -> tuple[DriftReference, str]:
    found = reference_images(predictor.meta, None, "train")
    if found is None:
        raise BundleError("this bundle has no drift reference and its training images are "
                          "not available here; run `vitkit ood fit BUNDLE DATA` once with the "
                          "training data (it stores a reference sample in the bundle).")
    train = embed_labelled(predictor, found.samples, batch_size, progress,
                           "features (reference)")
    return drift_reference(train, len(predictor.labels), seed), f"training data {found.source}"
