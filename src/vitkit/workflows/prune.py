"""`vitkit prune`: a ViT with narrower MLPs, recovered by distillation from the unpruned model.

1. The MLP units that matter least on the bundle's training images go (see
   :mod:`vitkit.compress.prune`); every block keeps the same width, so the result is the same
   timm architecture with a smaller ``mlp_ratio``.
2. The pruned model starts a short distillation (``vitkit distill``) with the unpruned bundle
   as teacher, on the bundle's own training data and split, and becomes a new bundle.

The result records the accuracy of the unpruned model, of the pruned one before recovery and
after, and the parameter counts; ``vitkit optimize`` / ``bench`` then measure its speed.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vitkit.backbones import BackboneSpec, rebuild
from vitkit.bundle import Bundle, BundleSource, save_weights
from vitkit.classify.config import DistillConfig
from vitkit.compress.prune import mlp_importance, prune_mlp_state, pruned_width, vit_mlps
from vitkit.compress.reference import compare, image_batches, reference_images
from vitkit.errors import DataError, VitkitError
from vitkit.predictor.predict import load
from vitkit.predictor.variants import REFERENCE_VARIANT

IMPORTANCE_IMAGES = 128  # class-balanced training images that rank the units
# The recovery fine-tunes trained weights end to end: a ViT's fine-tuning rates, not the 1e-3
# that distillation into a fresh student uses (measured: 1e-3 lost the pruned model's
# remaining accuracy, README).
RECOVERY_STAGES = {"head": {"share": 0.0}, "top": {"share": 0.0},
                   "full": {"share": 1.0, "lr": 1e-4, "layer_decay": 0.75}}


@dataclass
class PruneResult:
    """`vitkit prune --json`."""

    bundle: str
    source: str
    mlp_width: list[int]  # [before, after]
    parameters: list[int]  # [before, after]
    accuracy: dict[str, float | None] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_prune(bundle: BundleSource, out: Path | str, mlp_keep: float = 0.5, epochs: int = 3,
              data: str | None = None, progress: bool = True,
              distill_options: dict[str, Any] | None = None) -> PruneResult:
    """Prunes the MLP width of a ViT bundle to ``mlp_keep`` and recovers it by distillation.

    Args:
        bundle: A classifier bundle of a timm ViT.
        out: The run folder of the recovery (the new bundle is ``OUT/bundle``).
        mlp_keep: Share of each block's MLP units kept (rounded to multiples of 32).
        epochs: Distillation epochs (at least 1: a pruned model needs to recover).
        data: Labelled images (default: the bundle's training data, with its split).
        distill_options: Further :class:`DistillConfig` fields (e.g. ``batch_size``).

    Raises:
        VitkitError: not a timm ViT, a bad share, or no training images to rank units on.
    """
    from vitkit.workflows.distill import run_distill

    if epochs < 1:
        raise VitkitError("--epochs must be at least 1: the pruned model needs to recover.")
    opened = Bundle.open(bundle)
    bundle, meta = opened.path, opened.meta
    spec = BackboneSpec.from_dict(meta.backbone)
    if spec.source != "timm":
        raise VitkitError("MLP pruning works on timm Vision Transformers; this bundle's model "
                          f"comes from {spec.source}.")
    reference = load(opened, variant=REFERENCE_VARIANT, ood=False)
    model = reference.torch_model().eval()
    hidden = vit_mlps(model)[0].fc1.out_features
    width = pruned_width(hidden, mlp_keep)
    train_config = dict(meta.train.get("config") or {})
    source = data or train_config.get("data")
    ranking = reference_images(meta, data, split="train", limit=IMPORTANCE_IMAGES)
    if ranking is None or not source:
        raise DataError(f"{bundle}: its training images are not where they were; pass --data "
                        "with the labelled images it was trained on.")
    importance = mlp_importance(model, (images for images, _ in
                                        image_batches(ranking.samples, meta, 32)))
    state, ratio = prune_mlp_state(model, importance, width)
    timm_kwargs = {**spec.extra.get("timm_kwargs", {}), "mlp_ratio": ratio}
    pruned = rebuild(BackboneSpec(spec.name, "timm", spec.weights,
                                  extra={"timm_kwargs": timm_kwargs}), len(meta.labels))
    pruned.model.load_state_dict(state)
    accuracy = _accuracy_before_recovery(meta, data, reference, pruned)
    with tempfile.TemporaryDirectory(prefix="vitkit-prune-") as scratch:
        init = Path(scratch) / "pruned.safetensors"
        save_weights(pruned.model, init)
        config = DistillConfig(
            teacher=str(bundle), data=str(source), model=spec.name, weights=str(init),
            timm_kwargs=timm_kwargs, epochs=epochs, out=str(out),
            image_size=int(meta.preprocessing["input_size"][-1]),
            crop_pct=meta.preprocessing.get("crop_pct"),
            val_fraction=float(train_config.get("val_fraction", 0.2)),
            test_fraction=float(train_config.get("test_fraction", 0.0)),
            seed=int(train_config.get("seed", 0)),
            **({"stages": RECOVERY_STAGES} | (distill_options or {})))
        result = run_distill(config, progress=progress, teacher_bundle=opened)
    accuracy["recovered"] = result.val_accuracy
    return PruneResult(
        bundle=result.bundle, source=str(bundle), mlp_width=[hidden, width],
        parameters=[sum(p.numel() for p in model.parameters()),
                    sum(p.numel() for p in pruned.parameters())],
        accuracy=accuracy, distill=result.to_dict())


def _accuracy_before_recovery(meta: Any, data: str | None, reference: Any, pruned: Any
                              ) -> dict[str, float | None]:
    validation = reference_images(meta, data, split="val")
    if validation is None:
        return {"unpruned": None, "pruned": None}
    batches = list(image_batches(validation.samples, meta, 32))
    pruned.eval()
    with torch.inference_mode():
        comparison = compare(reference, pruned, batches)
    return {"unpruned": comparison.reference_accuracy, "pruned": comparison.accuracy}
