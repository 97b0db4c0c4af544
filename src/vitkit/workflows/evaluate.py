"""`vitkit eval`: a bundle measured on labelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitkit.classify.predict import load
from vitkit.console import stderr_console
from vitkit.data import Sample, scan, validate_samples
from vitkit.errors import DataError
from vitkit.evaluate.classification import evaluate_samples


def select_eval_split(samples: list[Sample]) -> tuple[str, list[Sample]]:
    """The test split if there is one, else val, else every image (plain class folders)."""
    for split in ("test", "val"):
        chosen = [s for s in samples if s.split == split]
        if chosen:
            return split, chosen
    return "all", list(samples)


def run_eval(bundle: Path, data: str, batch_size: int = 32, progress: bool = True,
             variant: str | None = None) -> dict[str, Any]:
    """Returns the `eval --json` document: metrics plus n, split, variant and skipped files."""
    predictor = load(bundle, variant=variant)
    split, samples = select_eval_split(scan(data).samples)
    unknown = sorted({s.label for s in samples} - set(predictor.labels))
    if unknown:
        raise DataError(
            f"{data} has classes the model does not know: {', '.join(unknown)}. The bundle "
            f"predicts {', '.join(predictor.labels)}; evaluate on data with those class folders."
        )
    report = validate_samples(samples, progress=progress)
    if report.skipped:
        stderr_console.print(f"[yellow]{report.summary()}[/]")
    if not report.usable:
        raise DataError(f"no usable images to evaluate in {data} ({report.summary()}).")
    evaluation = evaluate_samples(predictor, report.usable, batch_size=batch_size,
                                  progress=progress)
    return {
        **evaluation.metrics.to_dict(),
        "split": split,
        "variant": predictor.variant.name,
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in report.skipped],
    }
