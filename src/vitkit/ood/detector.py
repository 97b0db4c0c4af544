"""An OOD detector: one score of :mod:`vitkit.ood.scores`, its fitted statistics and the
threshold above which an image is "unknown", and how all of it lives in a bundle.

In the bundle: ``ood.safetensors`` holds the statistics (keys ``<method>.<name>``) and a
reference sample for drift checks (``drift.features``, ``drift.class_counts``);
``vitkit.json`` key ``ood`` records the method, threshold, accept rates and provenance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.bundle import Bundle, BundleSource, save_tensors, update_meta
from vitkit.errors import BundleError
from vitkit.ood.metrics import accept_rate, accept_threshold
from vitkit.ood.scores import METHODS, Stats, TrainingSet

OOD_FILE = "ood.safetensors"
DEFAULT_ACCEPT = 0.95
ROUGH_BELOW = 20
"""Fewer validation images than this give a threshold that can easily be off by several
points of accept rate (the 95th percentile of 19 numbers is the largest one)."""

DEFAULT_METHODS: dict[str, str] = {
    # Measured (bench/ood_methods.py, fine-tuned efficientnet_lite0, hymenoptera vs DTD
    # textures): knn AUROC 0.984 / FPR95 0.07, mahalanobis_norm 0.980 / 0.10, vim 0.948,
    # mahalanobis 0.924, msp/energy 0.815. OpenOOD v1.5 likewise finds kNN and ViM robust on
    # ResNet features where plain Mahalanobis is weak.
    "cnn": "knn",
    # Measured (bench/ood_methods.py) on the offline vit_small_patch14_dinov2 fine-tuned on
    # hymenoptera (val 0.908), chosen on DTD textures and checked on circuit boards and paper
    # it was not chosen on: mahalanobis_norm AUROC 0.897 / 0.852 / 0.918, vim 0.874 / 0.735 /
    # 0.910, mahalanobis 0.833 / 0.707 / 0.873, knn 0.717 / 0.357 / 0.834, msp 0.792 / 0.544 /
    # 0.721. (A weaker fine-tune, val 0.882: vim 0.889 vs 0.868 on DTD, equal elsewhere.)
    # As Mueller & Hein (2025, "Mahalanobis++") report, L2-normalising helps on ViTs.
    "vit": "mahalanobis_norm",
}


def default_method(family: str) -> str:
    """The method ``--method auto`` picks for a backbone family ("cnn" or "vit")."""
    return DEFAULT_METHODS.get(family, DEFAULT_METHODS["cnn"])


@dataclass
class OodDetector:
    """Scores images (higher = more out of distribution) and flags those above ``threshold``.

    ``threshold`` accepts ``accept_rate`` of the ``n_val`` in-distribution validation images
    it was set on (at least ``accept``, the share asked for).
    """

    method: str
    statistics: Stats
    threshold: float
    accept: float = DEFAULT_ACCEPT
    accept_rate: float = DEFAULT_ACCEPT
    n_val: int = 0

    @property
    def expected_ood_share(self) -> float:
        """The share of new in-distribution images expected above the threshold: when it is
        the j-th smallest of n validation scores, a new score from the same distribution
        exceeds it with probability (n - j + 1) / (n + 1). That is 5.2% for 153 images at 95%,
        but 1/7 = 14% for 6, where the threshold is simply the largest score."""
        if self.n_val <= 0:
            return 1.0 - self.accept
        above = round(self.n_val * (1.0 - self.accept_rate))
        return (above + 1) / (self.n_val + 1)

    def score(self, features: torch.Tensor, logits: torch.Tensor) -> np.ndarray:
        """(N,) float64 scores of pre-logits features (N, D) and logits (N, C)."""
        if self.method not in METHODS:
            raise BundleError(f"unknown OOD method {self.method!r}; this vitkit knows "
                              f"{', '.join(METHODS)}. Upgrade vitkit or fit OOD again.")
        scores = METHODS[self.method].score(self.statistics, features, logits)
        return scores.detach().cpu().double().numpy()

    def is_unknown(self, scores: np.ndarray | Iterable[float]) -> np.ndarray:
        """True where an image is out of distribution (``score > threshold``)."""
        return np.asarray(scores, dtype=np.float64) > self.threshold


def fit_detector(method: str, train: TrainingSet, val_features: torch.Tensor,
                 val_logits: torch.Tensor, accept: float = DEFAULT_ACCEPT,
                 **params: Any) -> OodDetector:
    """Fits ``method`` on the training set and sets the threshold that accepts ``accept`` of
    the validation images (never the training images: those the statistics have seen).

    Raises:
        ValueError: unknown method, no validation images, or a method that cannot run
            (ViM without a linear head).
    """
    if method not in METHODS:
        raise ValueError(f"unknown OOD method {method!r}; choose from {', '.join(METHODS)}")
    if len(val_features) == 0:
        raise ValueError("no validation images to set the threshold on")
    spec = METHODS[method]
    if spec.needs_head and (train.head_weight is None or train.head_bias is None):
        raise ValueError(f"{method} needs the classifier's linear head, which this model "
                         "does not have")
    statistics = spec.fit(train, **params)
    val_scores = spec.score(statistics, val_features, val_logits).double().numpy()
    threshold = accept_threshold(val_scores, accept)
    return OodDetector(method, statistics, threshold, accept, accept_rate(val_scores, threshold),
                       len(val_scores))


def fit_all(train: TrainingSet, val_features: torch.Tensor, val_logits: torch.Tensor,
            accept: float = DEFAULT_ACCEPT, methods: Iterable[str] | None = None
            ) -> dict[str, OodDetector]:
    """Every method that can run on this model (ViM only with a linear head)."""
    has_head = train.head_weight is not None and train.head_bias is not None
    return {name: fit_detector(name, train, val_features, val_logits, accept)
            for name in (methods or METHODS) if has_head or not METHODS[name].needs_head}


@dataclass
class DriftReference:
    """What new images are compared with: a sample of training features and the training
    images' predicted-class counts."""

    features: torch.Tensor  # (R, D)
    class_counts: torch.Tensor  # (C,)


def save_detector(bundle: Path | str, detector: OodDetector, record: Mapping[str, Any],
                  reference: DriftReference | None = None) -> None:
    """Writes ``ood.safetensors`` and the ``ood`` key of ``vitkit.json`` (``record`` plus the
    method, threshold and accept rates)."""
    tensors = {f"{detector.method}.{k}": v for k, v in detector.statistics.items()}
    if reference is not None:
        tensors["drift.features"] = reference.features.float()
        tensors["drift.class_counts"] = reference.class_counts.double()
    save_tensors(bundle, OOD_FILE, tensors)
    update_meta(bundle, ood={**record, "method": detector.method,
                             "threshold": detector.threshold, "accept": detector.accept,
                             "accept_rate": detector.accept_rate, "n_val": detector.n_val,
                             "expected_ood_share": detector.expected_ood_share,
                             "file": OOD_FILE})


def ood_record(bundle: BundleSource) -> dict[str, Any] | None:
    """The ``ood`` key of a bundle's ``vitkit.json``, or None when OOD was never fitted."""
    record = (Bundle.open(bundle).meta.model_extra or {}).get("ood")
    if record and not isinstance(record, dict):
        raise BundleError(f"{bundle}/vitkit.json: 'ood' is a {type(record).__name__}, not the "
                          "record `vitkit ood fit` writes; fit again with `vitkit ood fit`.")
    return dict(record) if record else None


def load_ood_detector(bundle: BundleSource) -> OodDetector | None:
    """The bundle's detector, or None when the bundle has no OOD fit."""
    bundle = Bundle.open(bundle)
    record = ood_record(bundle)
    if record is None:
        return None
    method = str(record.get("method"))
    tensors = bundle.tensors(str(record.get("file", OOD_FILE)))
    prefix = f"{method}."
    statistics = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if method not in METHODS or (not statistics and method not in ("msp",)):
        raise BundleError(f"{bundle} records OOD method {method!r} but {OOD_FILE} does not "
                          "hold its statistics; fit again with `vitkit ood fit`.")
    try:
        return OodDetector(method, statistics, float(record["threshold"]),
                           float(record.get("accept", DEFAULT_ACCEPT)),
                           float(record.get("accept_rate", DEFAULT_ACCEPT)),
                           int(record.get("n_val", 0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{bundle}/vitkit.json has an incomplete 'ood' record "
                          f"({type(exc).__name__}: {exc}); fit again with `vitkit ood fit`."
                          ) from exc


def load_drift_reference(bundle: BundleSource) -> DriftReference | None:
    """The reference sample stored at OOD fit time, or None."""
    bundle = Bundle.open(bundle)
    record = ood_record(bundle)
    if record is None:
        return None
    tensors = bundle.tensors(str(record.get("file", OOD_FILE)))
    if "drift.features" not in tensors:
        return None
    return DriftReference(tensors["drift.features"], tensors["drift.class_counts"])
