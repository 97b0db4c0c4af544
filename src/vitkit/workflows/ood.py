"""`vitkit ood fit|eval` and the OOD trust step at the end of training.

Statistics are fitted on the training images' features, the threshold on the validation
images' scores (so that 95% of them are accepted), and both are written into the bundle; from
then on :class:`~vitkit.predictor.predict.Predictor` answers "unknown" for images above it.
Without DATA, the bundle's own training data is used, its train/val split recomputed from the
recorded config (see :func:`vitkit.compress.reference.reference_images`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitkit.backbones import ImageClassifier
from vitkit.bundle import write_json_atomic
from vitkit.compress.quantize import is_transformer
from vitkit.compress.reference import reference_images
from vitkit.console import stderr_console
from vitkit.data import Sample, scan
from vitkit.errors import ConfigError, DataError
from vitkit.ood.detector import (
    DEFAULT_ACCEPT,
    ROUGH_BELOW,
    DriftReference,
    OodDetector,
    default_method,
    fit_all,
    load_ood_detector,
    save_detector,
)
from vitkit.ood.metrics import accept_rate, auroc, fpr_at_tpr
from vitkit.ood.scores import METHODS, TrainingSet
from vitkit.predictor.embed import Embeddings, embed_paths
from vitkit.predictor.predict import Predictor, expand_paths, load
from vitkit.predictor.variants import REFERENCE_VARIANT
from vitkit.workflows.trust_context import TrustContext

METHOD_CHOICES = ("auto", *METHODS)
DRIFT_REFERENCE_ROWS = 500


def backbone_family(model: ImageClassifier) -> str:
    """"vit" for vision transformers (timm or Hugging Face), else "cnn"."""
    return "vit" if is_transformer(model) else "cnn"


def linear_head(model: ImageClassifier) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight (C, D), bias (C,)) when the head is one Linear layer on the features, else
    None (ViM then cannot run)."""
    head = model.head
    if not isinstance(head, nn.Linear):
        return None
    bias = head.bias if head.bias is not None else torch.zeros(head.out_features)
    return head.weight.detach().float().cpu(), bias.detach().float().cpu()


def training_set(model: ImageClassifier, train: Embeddings) -> TrainingSet:
    if train.targets is None:
        raise ValueError("training embeddings need class labels")
    head = linear_head(model)
    return TrainingSet(train.features, train.logits, train.targets,
                       *(head if head is not None else (None, None)))


@dataclass
class OodFitResult:
    """What `vitkit ood fit` did (also the run folder's ``ood.json``)."""

    bundle: str
    method: str
    family: str
    threshold: float
    accept: float
    accept_rate_val: float
    n_train: int
    n_val: int
    fitted_on: str
    expected_ood_share: float = 0.05
    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def rough(self) -> bool:
        return self.n_val < ROUGH_BELOW

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "method": self.method, "family": self.family,
                "threshold": self.threshold, "accept": self.accept,
                "accept_rate_val": self.accept_rate_val, "n_train": self.n_train,
                "n_val": self.n_val, "rough_threshold": self.rough,
                "expected_ood_share": self.expected_ood_share,
                "fitted_on": self.fitted_on, "methods": self.methods,
                "skipped": self.skipped}


def fit_and_store(bundle: Path, predictor: Predictor, train: Embeddings, val: Embeddings,
                  method: str = "auto", accept: float = DEFAULT_ACCEPT, fitted_on: str = "",
                  seed: int = 0) -> OodFitResult:
    """Fits every method (their thresholds are recorded for comparison), stores ``method``
    ("auto": the default of the backbone family) and a drift reference in the bundle."""
    if method not in METHOD_CHOICES:
        raise ConfigError(f"unknown --method {method!r}; choose from "
                          f"{', '.join(METHOD_CHOICES)}.")
    if not 0.5 <= accept < 1.0:
        raise ConfigError(f"--accept must be in [0.5, 1) (the share of in-distribution images "
                          f"to accept), not {accept}.")
    if len(train) < 2:
        raise DataError("OOD statistics need at least 2 readable training images.")
    if len(val) == 0:
        raise DataError("OOD needs validation images to set the threshold on; give data "
                        "with a val/ split or more images per class.")
    if not (torch.isfinite(train.features).all() and torch.isfinite(val.features).all()):
        raise DataError("the model's features hold NaN or infinite values (did training "
                        "diverge?); OOD statistics cannot be fitted on them.")
    model = predictor.torch_model()
    family = backbone_family(model)
    chosen = default_method(family) if method == "auto" else method
    train_set = training_set(model, train)
    detectors = fit_all(train_set, val.features, val.logits, accept)
    if chosen not in detectors:
        raise ConfigError(f"{chosen} cannot run on this model (its head is not one linear "
                          "layer); choose another --method.")
    reference = drift_reference(train, len(predictor.labels), seed)
    result = OodFitResult(
        str(bundle), chosen, family, detectors[chosen].threshold, accept,
        detectors[chosen].accept_rate, len(train), len(val), fitted_on,
        detectors[chosen].expected_ood_share,
        {name: {"threshold": d.threshold, "accept_rate_val": d.accept_rate}
         for name, d in detectors.items()},
        [s.path for s in [*train.skipped, *val.skipped]])
    save_detector(bundle, detectors[chosen], {
        "family": family, "selected_by": "auto" if method == "auto" else "user",
        "accept_rate_val": result.accept_rate_val, "n_train": len(train),
        "rough_threshold": result.rough, "fitted_on": fitted_on, "methods": result.methods,
        "drift_reference_rows": len(reference.features)}, reference)
    return result


def drift_reference(train: Embeddings, n_classes: int, seed: int = 0) -> DriftReference:
    """Up to 500 training features (seeded sample) and the predicted-class counts of all
    training images."""
    features = train.features
    if len(features) > DRIFT_REFERENCE_ROWS:
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
        features = features[order[:DRIFT_REFERENCE_ROWS]]
    counts = torch.bincount(train.logits.argmax(dim=1), minlength=n_classes).double()
    return DriftReference(features.float(), counts)


def embed_labelled(predictor: Predictor, samples: Sequence[Sample], batch_size: int = 32,
                   progress: bool = True, description: str = "features") -> Embeddings:
    """Embeds labelled samples; unreadable images are skipped (and listed), not raised."""
    embedded = embed_paths(predictor, [s.path for s in samples], batch_size, progress,
                           description)
    index = {label: i for i, label in enumerate(predictor.labels)}
    label_of = {str(s.path): s.label for s in samples}
    embedded.targets = torch.tensor([index[label_of[p]] for p in embedded.paths],
                                    dtype=torch.long)
    return embedded


def _split(predictor: Predictor, data: str | None, split: str) -> list[Sample]:
    found = reference_images(predictor.meta, data, split)
    if found is None:
        trained_on = predictor.meta.train.get("config", {}).get("data")
        raise DataError(f"the bundle's training data ({trained_on}) is not available here, "
                        f"so there are no {split} images to fit on; pass the labelled image "
                        "folder as DATA.")
    return found.samples


def run_ood_fit(bundle: Path, data: str | None = None, method: str = "auto",
                accept: float = DEFAULT_ACCEPT, batch_size: int = 32,
                progress: bool = True) -> OodFitResult:
    """`vitkit ood fit BUNDLE [DATA]`."""
    predictor = load(bundle, variant=REFERENCE_VARIANT, ood=False)
    train_samples = _split(predictor, data, "train")
    val_samples = _split(predictor, data, "val")
    train = embed_labelled(predictor, train_samples, batch_size, progress, "features (train)")
    val = embed_labelled(predictor, val_samples, batch_size, progress, "features (val)")
    source = data or str(predictor.meta.train.get("config", {}).get("data", ""))
    return fit_and_store(bundle, predictor, train, val, method, accept,
                         f"{source} (train {len(train)}, val {len(val)})")


def fit_ood_step(context: TrustContext) -> None:
    """Trust step: fit on the run's train split, threshold on its val split, write
    ``ood.json`` into the run folder."""
    train, val = context.embeddings("train"), context.embeddings("val")
    result = fit_and_store(context.bundle, context.predictor, train, val,
                           fitted_on=f"{context.config.data} (train {len(train)}, "
                                     f"val {len(val)})", seed=context.config.seed)
    document = {**result.to_dict(), "bundle": str(context.bundle)}
    if result.rough:
        document["note"] = (
            f"only {result.n_val} validation images: the threshold is rough (expect about "
            f"{result.expected_ood_share:.0%} of new in-distribution images to be called "
            f"unknown, not {1 - result.accept:.0%}); more validation images fix this")
        stderr_console.print(f"[yellow]OOD:[/] {document['note']}")
    write_json_atomic(context.run_dir / "ood.json", document)
    context.reload()


def _in_distribution_paths(predictor: Predictor, data: str) -> tuple[list[Path], str]:
    """The images `ood eval --in DATA` treats as in-distribution: the held-out val split when
    DATA is the bundle's own training data, else DATA's test/ or val/ split, else all of it."""
    from vitkit.workflows.evaluate import select_eval_split

    trained_on = str(predictor.meta.train.get("config", {}).get("data", ""))
    if trained_on and Path(trained_on).resolve() == Path(data).resolve():
        found = reference_images(predictor.meta, None, "val")
        if found is not None:
            return [s.path for s in found.samples], "val split of the training data"
    split, samples = select_eval_split(scan(data).samples)
    return [s.path for s in samples], split


def run_ood_eval(bundle: Path, in_data: str, out_dir: str, batch_size: int = 32,
                 progress: bool = True) -> dict[str, Any]:
    """`vitkit ood eval`: every method fitted on the bundle's training images, each measured
    on in-distribution images (``in_data``) against out-of-distribution ones (``out_dir``)."""
    predictor = load(bundle, variant=REFERENCE_VARIANT, ood=False)
    meta = predictor.meta
    train_found = reference_images(meta, None, "train")
    if train_found is None:
        train_found = reference_images(meta, in_data, "train")
    if train_found is None:
        raise DataError("ood eval fits every method on the bundle's training images, which "
                        "are not available here; pass the training folder as --in.")
    in_paths, in_split = _in_distribution_paths(predictor, in_data)
    out_paths, missing = expand_paths([out_dir], dicom=True)
    if missing or not out_paths:
        raise DataError(f"{out_dir} holds no images; give a folder of out-of-distribution "
                        "images (searched recursively).")
    train = embed_labelled(predictor, train_found.samples, batch_size, progress,
                           "features (train)")
    inside = embed_paths(predictor, in_paths, batch_size, progress, "features (in)")
    outside = embed_paths(predictor, out_paths, batch_size, progress, "features (out)")
    if len(inside) == 0 or len(outside) == 0:
        raise DataError("no readable images on one side: ood eval needs both in- and "
                        "out-of-distribution images.")
    val_found = reference_images(meta, None, "val")
    threshold_from = "val split of the training data"
    if val_found is None:
        val, threshold_from = inside, "the --in images"
    elif [str(s.path) for s in val_found.samples] == [str(p) for p in in_paths]:
        val = inside  # the usual case, --in is the training folder: embed it once
    else:
        val = embed_paths(predictor, [s.path for s in val_found.samples], batch_size,
                          progress, "features (val)")
    model = predictor.torch_model()
    detectors = fit_all(training_set(model, train), val.features, val.logits)
    methods = {name: _measure(d, inside, outside) for name, d in detectors.items()}
    stored = load_ood_detector(bundle)
    family = backbone_family(model)
    return {
        "methods": methods,
        "selected": stored.method if stored is not None else default_method(family),
        "best": max(methods, key=lambda n: methods[n]["auroc"]),
        "stored": None if stored is None else {"method": stored.method,
                                               **_measure(stored, inside, outside)},
        "family": family, "n_train": len(train), "n_in": len(inside), "n_out": len(outside),
        "in": f"{in_data} ({in_split})", "out": str(out_dir), "threshold_from": threshold_from,
        "skipped": [s.to_dict() for s in [*train.skipped, *inside.skipped, *outside.skipped]],
    }


def _measure(detector: OodDetector, inside: Embeddings, outside: Embeddings
             ) -> dict[str, float]:
    s_in = detector.score(inside.features, inside.logits)
    s_out = detector.score(outside.features, outside.logits)
    return {"auroc": auroc(s_in, s_out), "fpr95": fpr_at_tpr(s_in, s_out),
            "threshold": detector.threshold,
            "accept_rate": accept_rate(s_in, detector.threshold),
            "refuse_rate_out": float(np.mean(detector.is_unknown(s_out)))}

