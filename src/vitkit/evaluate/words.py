"""Classification metrics read out in plain words, for screens and reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def describe_accuracy(metrics: Mapping[str, Any], split: str = "test") -> str:
    """What a user should take from a metrics dict (``ClassificationMetrics.to_dict()``).

    E.g. "Of 400 test images, 388 (97.0%) got the right class. Per class, the share of its
    images recognised (recall): nominal 99%, local 91%, global 100%. Weakest: local — 9 of
    100 were called something else, mostly nominal (8)."
    """
    n = int(metrics["n"])
    accuracy = float(metrics["accuracy"])
    text = (f"Of {n} {split} images, {round(accuracy * n)} ({accuracy:.1%}) got the right "
            "class.")
    per_class: Mapping[str, Mapping[str, Any]] = metrics.get("per_class") or {}
    labels = [str(label) for label in metrics.get("labels") or per_class]
    if len(per_class) < 2:
        return text
    recalls = ", ".join(f"{label} {float(per_class[label]['recall']):.0%}"
                        for label in labels if label in per_class)
    text += f" Per class, the share of its images recognised (recall): {recalls}."
    weakest = min((label for label in labels if label in per_class),
                  key=lambda label: float(per_class[label]["recall"]))
    support = int(per_class[weakest]["support"])
    missed = support - round(float(per_class[weakest]["recall"]) * support)
    if missed == 0:
        return text + " Every class was recognised every time."
    text += (f" Weakest: {weakest} — {missed} of {support} were called something else")
    matrix = metrics.get("confusion_matrix")
    if matrix and weakest in labels:
        row = list(matrix[labels.index(weakest)])
        row[labels.index(weakest)] = -1
        worst = max(range(len(row)), key=row.__getitem__)
        if row[worst] > 0:
            text += f", mostly {labels[worst]} ({row[worst]})"
    return text + "."
