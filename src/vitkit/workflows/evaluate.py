"""`vitkit eval`: a bundle measured on labelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitkit.console import stderr_console
from vitkit.data import Sample, scan, validate_samples
from vitkit.data.groups import DEFAULT_GROUP_COLUMN
from vitkit.errors import DataError
from vitkit.evaluate.classification import evaluate_samples
from vitkit.evaluate.fairness import DEFAULT_MIN_GROUP_SIZE
from vitkit.predictor.predict import load
from vitkit.predictor.tta import TTA_VIEWS, TtaTiming
from vitkit.workflows.fairness import evaluation_fairness


def select_eval_split(samples: list[Sample]) -> tuple[str, list[Sample]]:
    """The test split if there is one, else val, else every image (plain class folders)."""
    for split in ("test", "val"):
        chosen = [s for s in samples if s.split == split]
        if chosen:
            return split, chosen
    return "all", list(samples)


def run_eval(bundle: Path, data: str, batch_size: int = 32, progress: bool = True,
             variant: str | None = None,
             groups: Path | None = None, group_column: str = DEFAULT_GROUP_COLUMN,
             min_group_size: int = DEFAULT_MIN_GROUP_SIZE, tta: str = "none") -> dict[str, Any]:
    """Returns the `eval --json` document: metrics (probabilities scaled by the bundle's
    temperature, averaged over the ``tta`` views) plus n, split, variant, temperature, ``tta``
    (views, seconds per image, slowdown vs the plain view; only with TTA) and skipped files;
    with ``groups`` (a CSV of path,group) also ``fairness`` (see workflows/fairness)."""
    predictor = load(bundle, variant=variant, tta=tta)
    split, samples = select_eval_split(scan(data).samples)
    unknown = sorted({s.label for s in samples} - set(predictor.labels))
    if unknown:
        raise DataError(
            f"{data} has classes the model does not know: {', '.join(unknown)}. The bundle "
            f"predicts {', '.join(predictor.labels)}; evaluate on data with those class folders."
        )
    report = validate_samples(samples, progress=progress, intensity=predictor.intensity)
    if report.skipped:
        stderr_console.print(f"[yellow]{report.summary()}[/]")
    if not report.usable:
        raise DataError(f"no usable images to evaluate in {data} ({report.summary()}).")
    # With TTA the plain view is timed too, in the same pass, to report the slowdown.
    timing = TtaTiming(len(TTA_VIEWS[tta])) if tta != "none" else None
    evaluation = evaluate_samples(predictor, report.usable, batch_size=batch_size,
                                  progress=progress, timing=timing)
    fairness = None if groups is None else evaluation_fairness(
        evaluation, predictor.labels, data, groups, group_column, min_group_size)
    return {
        **evaluation.metrics.to_dict(),
        "split": split,
        "variant": predictor.variant.name,
        "temperature": predictor.temperature,
        **({"tta": timing.to_dict()} if timing is not None else {}),
        "n_skipped": len(report.skipped),
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in report.skipped],
        **({"fairness": fairness} if fairness is not None else {}),
    }
