"""What training measures and stores once the weights are final: the trust steps.

``finish_run`` calls :func:`after_training` with the saved bundle. Each step (OOD statistics,
temperature scaling, explanation examples, the feature map) is a function of a
:class:`TrustContext`; it writes its files into the run folder and, when it fits something
the bundle needs at prediction time, into the bundle. A failing step is reported and skipped:
it never costs the user the trained model.

Files each step leaves in the run folder (the report reads them when present):
    ood.json, calibration.json + reliability.png, explanations/explanations.json + PNGs,
    feature_map.png (+ feature_map.json).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitkit.classify.config import TrainConfig
from vitkit.console import stderr_console
from vitkit.data import Sample
from vitkit.errors import VitkitError
from vitkit.predictor.embed import Embeddings, embed_samples
from vitkit.predictor.predict import Predictor, load
from vitkit.predictor.variants import REFERENCE_VARIANT
from vitkit.workflows.calibration import calibration_step
from vitkit.workflows.explain import explain_examples_step
from vitkit.workflows.feature_map import feature_map_step
from vitkit.workflows.ood import fit_ood_step


@dataclass
class TrustContext:
    """Everything a trust step may use; embeddings are computed once, on first use."""

    bundle: Path
    run_dir: Path
    config: TrainConfig
    samples: dict[str, list[Sample]]  # "train" / "val" / "test"
    progress: bool = True
    _predictor: Predictor | None = None
    _embeddings: dict[str, Embeddings] = field(default_factory=dict)

    @property
    def predictor(self) -> Predictor:
        """The saved bundle, loaded (again, after a step changed it: see :meth:`reload`)."""
        if self._predictor is None:
            self._predictor = load(self.bundle, variant=REFERENCE_VARIANT)
        return self._predictor

    def reload(self) -> None:
        """Forget the loaded predictor: the next use reads the bundle as it is now."""
        self._predictor = None

    def embeddings(self, split: str) -> Embeddings:
        """Features and logits of a split's images (computed once per run)."""
        if split not in self._embeddings:
            self._embeddings[split] = embed_samples(
                self.predictor, self.samples[split], self.config.batch_size,
                self.config.num_workers, self.progress, f"features ({split})")
        return self._embeddings[split]


TrustStep = Callable[[TrustContext], None]


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
