"""vitkit: from a folder of images to a light, fast and trustworthy vision model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vitkit.version import __version__

if TYPE_CHECKING:
    from vitkit.bundle import BundleSource
    from vitkit.classify.config import TrainConfig
    from vitkit.predictor.predict import Predictor
    from vitkit.workflows.train import TrainResult


def load(path: BundleSource, device: str = "cpu", variant: str | None = None,
         threads: int | None = None, ood: bool = True) -> Predictor:
    """Loads a bundle as a Predictor: ``predictor(batch) -> logits``, ``predict_paths(...)``.

    ``variant`` picks the runtime and precision (``onnx-fp32``, ``openvino-int8``, … once
    exported or quantized; default: the bundle's default variant, which ``vitkit optimize``
    chooses by measurement, else ``torch-fp32``): the Predictor is the same either way.
    With ``ood`` (default) and an OOD fit in the bundle, images unlike the training data are
    predicted as "unknown" (``ood=False``: always a class). ``path`` is the bundle folder
    (or a :class:`~vitkit.bundle.Bundle` already opened).
    """
    from vitkit.predictor.predict import load as _load

    return _load(path, device=device, variant=variant, threads=threads, ood=ood)


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Runs `vitkit train` from Python with a :class:`~vitkit.classify.config.TrainConfig`."""
    from vitkit.workflows.train import run_training

    return run_training(config, resume=resume, progress=progress)


__all__ = ["__version__", "load", "train"]
