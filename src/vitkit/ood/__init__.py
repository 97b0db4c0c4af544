"""Out-of-distribution detection and drift: is an image (or a batch) unlike the training data?

Pure math in :mod:`~vitkit.ood.scores` (the scores), :mod:`~vitkit.ood.metrics` (AUROC,
FPR95) and :mod:`~vitkit.ood.drift` (MMD, class mix, binomial tests); the detector and its
place in the bundle in :mod:`~vitkit.ood.detector`. Commands: ``vitkit ood fit|eval`` and
``vitkit drift`` (see :mod:`vitkit.workflows.ood` and :mod:`vitkit.workflows.drift`).
"""

from vitkit.ood.detector import (
    DEFAULT_METHODS,
    DriftReference,
    OodDetector,
    default_method,
    fit_all,
    fit_detector,
    load_drift_reference,
    load_ood_detector,
    save_detector,
)
from vitkit.ood.scores import METHODS, TrainingSet

__all__ = ["DEFAULT_METHODS", "METHODS", "DriftReference", "OodDetector", "TrainingSet",
           "default_method", "fit_all", "fit_detector", "load_ood_detector",
           "load_drift_reference", "save_detector"]
