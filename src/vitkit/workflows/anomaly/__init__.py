"""The `vitkit anomaly fit | score | eval` jobs: files, progress and bundles around the
methods of :mod:`vitkit.anomaly` — one module per verb (:mod:`.fit`, :mod:`.score`,
:mod:`.evaluate`)."""

from __future__ import annotations

from vitkit.workflows.anomaly.evaluate import run_eval
from vitkit.workflows.anomaly.fit import FitResult, run_fit
from vitkit.workflows.anomaly.score import run_score

__all__ = ["FitResult", "run_eval", "run_fit", "run_score"]
