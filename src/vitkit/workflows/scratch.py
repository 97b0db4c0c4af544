"""`vitkit train --compare-scratch`: the same recipe from random weights, and the transfer gain.

The comparison run is an ordinary training run in ``OUT/scratch`` (its own metrics, bundle,
summary and report) with ``weights: none`` and everything else as configured: the same data
and split (the split is a function of the data and the seed), seed, epochs, stages and
extras. It skips the trust steps (OOD fit, calibration, explanations, feature map), which
say nothing about transfer. The main run's summary, bundle and report then get a
``transfer`` record: both validation accuracies, as measured on the saved bundles, and the
gain ``(pretrained - scratch) / (1 - scratch)`` (:func:`vitkit.evaluate.curves.transfer_gain`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from vitkit.bundle import Bundle, update_meta, write_json_atomic
from vitkit.classify.config import TrainConfig, TrustConfig
from vitkit.console import stderr_console
from vitkit.evaluate.curves import transfer_gain
from vitkit.report import write_report


class RunResult(Protocol):
    """What the comparison reads of a training run's result (:class:`TrainResult`; this
    module is below the one that defines it)."""

    bundle: str
    run_dir: str
    val_accuracy: float
    test_accuracy: float | None
    best_epoch: int
    learning_curve: dict[str, Any]


ResultT = TypeVar("ResultT", bound=RunResult)

SCRATCH_DIR = "scratch"
NO_TRUST = TrustConfig(ood=False, calibrate=False, explain_examples=0, feature_map=False)


def scratch_config(config: TrainConfig, run_dir: Path) -> TrainConfig:
    """The run's recipe from random weights, into ``run_dir/scratch``; no comparison runs of
    its own (neither from scratch nor a domain adaptation's source-only baseline)."""
    domain = config.domain.model_copy(update={"compare_source_only": False})
    return config.model_copy(update={"weights": "none", "compare_scratch": False,
                                     "domain": domain, "trust": NO_TRUST,
                                     "out": str(run_dir / SCRATCH_DIR)})


def train_scratch(config: TrainConfig, run_dir: Path, resume: bool, progress: bool,
                  run: Callable[..., ResultT]) -> ResultT:
    """Trains the scratch run (``run`` is :func:`~vitkit.workflows.train.run_training`), or
    with ``resume`` continues it (a finished one only writes its bundle and report again)."""
    scratch = scratch_config(config, run_dir)
    stderr_console.print(f"[bold]from scratch[/] (the same recipe from random weights) -> "
                         f"{scratch.out}")
    result = run(scratch, resume=resume and Path(scratch.out).exists(), progress=progress)
    stderr_console.print("[bold]from the pretrained weights[/]")
    return result


def transfer_record(pretrained: RunResult, scratch: RunResult) -> dict[str, Any]:
    """Both accuracies (validation, and test when the run has a test split) and the gains."""
    record: dict[str, Any] = {
        "pretrained_accuracy": pretrained.val_accuracy,
        "scratch_accuracy": scratch.val_accuracy,
        "gain": transfer_gain(pretrained.val_accuracy, scratch.val_accuracy),
        "scratch_run": scratch.run_dir,
        "scratch_best_epoch": scratch.best_epoch,
        "scratch_learning_curve": scratch.learning_curve,
    }
    if pretrained.test_accuracy is not None and scratch.test_accuracy is not None:
        record.update(pretrained_test_accuracy=pretrained.test_accuracy,
                      scratch_test_accuracy=scratch.test_accuracy,
                      test_gain=transfer_gain(pretrained.test_accuracy, scratch.test_accuracy))
    return record


def finish_comparison(result: ResultT, scratch: RunResult) -> ResultT:
    """Writes the transfer record into the run's summary, bundle and report; returns
    ``result`` with it."""
    record = transfer_record(result, scratch)
    run_dir = Path(result.run_dir)
    summary_path = run_dir / "summary.json"
    write_json_atomic(summary_path, {**json.loads(summary_path.read_text()), "transfer": record})
    bundle = Bundle.open(result.bundle)
    update_meta(result.bundle, train={**bundle.meta.train, "transfer": record})
    write_report(run_dir)
    stderr_console.print(
        f"transfer: val accuracy {record['pretrained_accuracy']:.3f} pretrained vs "
        f"{record['scratch_accuracy']:.3f} from scratch; gain {record['gain']:.3f} (the share "
        "of the scratch model's errors the pretrained weights remove)")
    return dataclasses.replace(result, transfer=record)  # type: ignore[type-var]
