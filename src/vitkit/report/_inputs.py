"""Reading the optional files of a run directory, tolerating absent or broken ones."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from vitkit.report._images import is_png

SUMMARY = "summary.json"
EVAL = "eval.json"
TEST_EVAL = "test_eval.json"
METRICS = "metrics.csv"
LEARNING_CURVES = "learning_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
PREDICTIONS = "predictions.json"
SKIPPED = "skipped.csv"
# Trust files: optional, each section of the report's Trust part says how to produce its own.
CALIBRATION = "calibration.json"
RELIABILITY = "reliability.png"
OOD = "ood.json"
EXPLANATIONS_DIR = "explanations"
EXPLANATIONS = f"{EXPLANATIONS_DIR}/explanations.json"
FEATURE_MAP = "feature_map.json"
FEATURE_MAP_PNG = "feature_map.png"
ROBUSTNESS = "robustness.json"
ROBUSTNESS_PNG = "robustness.png"
FAIRNESS = "fairness.json"

# What each file contributes, for the "missing inputs" notice.
PURPOSE = {
    SUMMARY: "run details",
    EVAL: "evaluation metrics and per-class table",
    METRICS: "per-epoch table and learning curves",
    PREDICTIONS: "sample predictions",
    SKIPPED: "list of skipped files",
}


@dataclass
class TrustInputs:
    """The trust files of a run directory; ``None`` means absent or unreadable.

    ``explanations`` is the list of records of ``explanations/explanations.json`` (the file may
    also be an object with an ``explanations`` list, as ``vitkit explain --json`` prints).
    """

    calibration: dict | None = None
    reliability_png: bytes | None = None
    ood: dict | None = None
    explanations: list | None = None
    feature_map: dict | None = None
    feature_map_png: bytes | None = None
    robustness: dict | None = None
    robustness_png: bytes | None = None
    fairness: dict | None = None


@dataclass
class RunInputs:
    """What could be read from a run directory; ``None`` means absent or unreadable.

    Attributes:
        run_dir: The run directory.
        summary: Parsed ``summary.json`` (a JSON object).
        eval: Parsed ``eval.json`` (a JSON object): the validation split.
        test_eval: Parsed ``test_eval.json``: the held-out test split, when the run had one.
        metrics: Rows of ``metrics.csv``.
        predictions: Entries of ``predictions.json`` (a JSON list).
        skipped: Rows of ``skipped.csv``.
        learning_curves_png: Bytes of a valid ``learning_curves.png``.
        confusion_matrix_png: Bytes of a valid ``confusion_matrix.png``.
        trust: The optional trust files (calibration, OOD, explanations, feature map,
            robustness, fairness); their absence is not listed in ``missing``.
        missing: Names of the expected files that do not exist.
        problems: ``(file name, message)`` for files that exist but could not be used.
    """

    run_dir: Path
    summary: dict | None = None
    eval: dict | None = None
    test_eval: dict | None = None
    metrics: list[dict[str, str]] | None = None
    predictions: list | None = None
    skipped: list[dict[str, str]] | None = None
    learning_curves_png: bytes | None = None
    confusion_matrix_png: bytes | None = None
    trust: TrustInputs = field(default_factory=TrustInputs)
    missing: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def read_run(run_dir: Path) -> RunInputs:
    """Read every known file of ``run_dir`` that exists and is well formed."""
    run = RunInputs(run_dir=run_dir)
    summary = _read_json(run, SUMMARY, dict)
    run.summary = summary if isinstance(summary, dict) else None
    evaluation = _read_json(run, EVAL, dict)
    run.eval = evaluation if isinstance(evaluation, dict) else None
    if (run_dir / TEST_EVAL).is_file():
        test_evaluation = _read_json(run, TEST_EVAL, dict)
        run.test_eval = test_evaluation if isinstance(test_evaluation, dict) else None
    predictions = _read_json(run, PREDICTIONS, list)
    run.predictions = predictions if isinstance(predictions, list) else None
    run.metrics = _read_csv(run, METRICS)
    run.skipped = _read_csv(run, SKIPPED)
    run.learning_curves_png = _read_png(run, LEARNING_CURVES)
    run.confusion_matrix_png = _read_png(run, CONFUSION_MATRIX)
    run.trust = read_trust(run)
    return run


def read_trust(run: RunInputs) -> TrustInputs:
    """Read the trust files of ``run`` that exist; broken ones go to ``run.problems``."""
    trust = TrustInputs()
    trust.calibration = _optional_dict(run, CALIBRATION)
    trust.reliability_png = _read_png(run, RELIABILITY)
    trust.ood = _optional_dict(run, OOD)
    explanations = None
    if (run.run_dir / EXPLANATIONS).is_file():
        explanations = _read_json(run, EXPLANATIONS, (list, dict))
    if isinstance(explanations, dict):
        explanations = explanations.get("explanations")
        if not isinstance(explanations, list):
            run.problems.append((EXPLANATIONS, "should hold a list of explanations"))
    trust.explanations = explanations if isinstance(explanations, list) else None
    trust.feature_map = _optional_dict(run, FEATURE_MAP)
    trust.feature_map_png = _read_png(run, FEATURE_MAP_PNG)
    trust.robustness = _optional_dict(run, ROBUSTNESS)
    trust.robustness_png = _read_png(run, ROBUSTNESS_PNG)
    trust.fairness = _optional_dict(run, FAIRNESS)
    return trust


def _optional_dict(run: RunInputs, name: str) -> dict | None:
    """A JSON object file; unlike :func:`_read_json`, absence is not recorded as missing."""
    if not (run.run_dir / name).is_file():
        return None
    value = _read_json(run, name, dict)
    return value if isinstance(value, dict) else None


def _read_json(run: RunInputs, name: str, kind: type | tuple[type, ...]) -> object | None:
    path = run.run_dir / name
    if not path.is_file():
        run.missing.append(name)
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        run.problems.append((name, f"could not be read: {err}"))
        return None
    if not isinstance(value, kind):
        expected = "an object" if kind is dict else "a list"
        run.problems.append((name, f"should hold {expected}, got {type(value).__name__}"))
        return None
    return value


def _read_csv(run: RunInputs, name: str) -> list[dict[str, str]] | None:
    path = run.run_dir / name
    if not path.is_file():
        run.missing.append(name)
        return None
    try:
        with path.open(newline="", encoding="utf-8") as f:
            # restkey/restval keep ragged rows as dicts of str instead of lists and None.
            reader = csv.DictReader(f, restkey="_extra", restval="")
            rows = [{k: v for k, v in row.items() if k != "_extra"} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        run.problems.append((name, f"could not be read: {err}"))
        return None
    return rows


def _read_png(run: RunInputs, name: str) -> bytes | None:
    path = run.run_dir / name
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
    except OSError as err:
        run.problems.append((name, f"could not be read: {err}"))
        return None
    if not is_png(data):
        run.problems.append((name, "is not a valid PNG image"))
        return None
    return data
