"""An image + audio model measured on labelled rows, with both inputs or with one alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from vitkit.console import make_progress
from vitkit.data.audio import load_wav
from vitkit.data.images import load_rgb
from vitkit.data.paired import PairedRow
from vitkit.data.paired_inputs import PairedInput
from vitkit.errors import DataError
from vitkit.evaluate.metrics import ClassificationMetrics, classification_metrics
from vitkit.fusion.predict import FusionPredictor

MODALITY_CHOICES = ("both", "image", "audio")


def check_modality(modality: str) -> str:
    if modality not in MODALITY_CHOICES:
        raise DataError(f"--modality {modality!r} is not one of {', '.join(MODALITY_CHOICES)}: "
                        "both gives the model every input a row has; image or audio gives it "
                        "that input alone.")
    return modality


def rows_for(rows: Sequence[PairedRow], modality: str) -> tuple[list[PairedRow], int]:
    """The rows the ``modality`` can be measured on, the other input removed for a single
    modality; and how many rows had no input of that modality."""
    if modality == "both":
        return list(rows), 0
    kept = [replace(row, audio=None) if modality == "image" else replace(row, image=None)
            for row in rows if row.path(modality) is not None]
    return kept, len(rows) - len(kept)


def load_example(predictor: FusionPredictor, row: PairedRow) -> PairedInput:
    """A validated row read and prepared (files were checked by ``validate_paired``)."""
    image = None if row.image is None else load_rgb(row.image)[0]
    waveform = None if row.audio is None else load_wav(row.audio,
                                                       predictor.settings.max_seconds)
    return predictor.prepare(image, waveform)


def evaluate_rows(predictor: FusionPredictor, rows: Sequence[PairedRow], batch_size: int = 32,
                  progress: bool = False, description: str = "evaluating"
                  ) -> ClassificationMetrics:
    """Accuracy, per-class precision/recall/F1, confusion matrix, ECE over ``rows`` as they
    are (use :func:`rows_for` first to measure one modality alone).

    Raises:
        DataError: No rows, or a label the model does not have.
    """
    if not rows:
        raise DataError("no rows to evaluate.")
    unknown = sorted({str(r.label) for r in rows} - set(predictor.labels))
    if unknown:
        raise DataError(f"the manifest has labels the model does not know: "
                        f"{', '.join(unknown)}. The bundle predicts "
                        f"{', '.join(predictor.labels)}.")
    index = {label: i for i, label in enumerate(predictor.labels)}
    probabilities = []
    with make_progress(progress) as bar:
        task = bar.add_task(description, total=len(rows), stats="") if bar else None
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            inputs = [load_example(predictor, row) for row in chunk]
            probabilities.append(predictor.probabilities(inputs).numpy())
            if bar is not None and task is not None:
                bar.update(task, advance=len(chunk))
    targets = np.array([index[str(r.label)] for r in rows])
    return classification_metrics(targets, np.concatenate(probabilities), predictor.labels,
                                  top_k=(1,))
