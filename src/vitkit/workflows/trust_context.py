"""What every trust step receives: the saved bundle, the run folder, the config and the
samples, with the loaded predictor and the embeddings shared between the steps.

It lives apart from :mod:`vitkit.workflows.trust` (which lists the steps and runs them) so
that the step modules (ood, calibration, explain, feature_map) can import it without
importing the module that imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitkit.classify.config import TrainConfig
from vitkit.data import Sample
from vitkit.predictor.embed import Embeddings, embed_samples
from vitkit.predictor.predict import Predictor, load
from vitkit.predictor.variants import REFERENCE_VARIANT


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
