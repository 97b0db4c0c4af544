"""What training measures and stores once the weights are final: the trust steps.

``finish_run`` calls :func:`after_training` with the saved bundle. Each step (OOD statistics,
temperature scaling, explanation examples, the feature map) is a function of a
:class:`~vitkit.workflows.trust_context.TrustContext` (its own module, so that the steps
import it without importing this one); it writes its files into the run folder and, when it
fits something the bundle needs at prediction time, into the bundle. A failing step is
reported and skipped: it never costs the user the trained model.

Files each step leaves in the run folder (the report reads them when present):
    ood.json, calibration.json + reliability.png, explanations/explanations.json + PNGs,
    feature_map.png (+ feature_map.json).
"""

from __future__ import annotations

from vitkit.classify.config import TrainConfig
from vitkit.console import stderr_console
from vitkit.errors import VitkitError
from vitkit.workflows.calibration import calibration_step
from vitkit.workflows.explain import explain_examples_step
from vitkit.workflows.feature_map import feature_map_step
from vitkit.workflows.ood import fit_ood_step
from vitkit.workflows.trust_context import TrustContext, TrustStep


def trust_steps(config: TrainConfig) -> list[tuple[str, TrustStep]]:
    """The steps ``config`` asks for, in order (OOD before calibration: both read features)."""
    steps: list[tuple[str, TrustStep]] = []
    if config.trust.ood:
        steps.append(("ood", fit_ood_step))
    if config.trust.calibrate:
        steps.append(("calibration", calibration_step))
    # Steps that change the bundle go above: the feature map only reads features, so it is last.
    if config.trust.explain_examples > 0:
        steps.append(("explanations", explain_examples_step))
    if config.trust.feature_map:
        steps.append(("feature_map", feature_map_step))
    return steps


def after_training(context: TrustContext) -> list[str]:
    """Runs the configured steps; returns the names of those that failed (and were skipped)."""
    failed = []
    for name, step in trust_steps(context.config):
        try:
            step(context)
        except VitkitError as problem:
            stderr_console.print(f"[yellow]skipped {name}:[/] {problem}")
            failed.append(name)
    return failed


__all__ = ["TrustContext", "TrustStep", "after_training", "trust_steps"]
