"""`vitkit train DATA --target-domain DIR --domain-adapt dann`: domain-adversarial training and
what it measured on the target images.

Around the usual training run (:func:`vitkit.workflows.train.run_training`):

1. :func:`prepare_target`: the unlabelled target images, validated like the training data (a
   bad file is skipped and listed in ``OUT/target_skipped.csv``), split (seeded) into those
   trained on and a held-out share that only measures; the labelled ``--target-eval`` images.
2. :func:`train_source_only` (``--compare-source-only``): the same recipe without the domain
   loss, into ``OUT/source-only``: the "before" of every figure.
3. :func:`attach_dann`: the engine's loss hook (:class:`vitkit.classify.domain.DannLoss`).
4. :func:`finish_adaptation`: both bundles measured on the target images; the record goes to
   ``OUT/domain_adaptation.json``, ``summary.json``, the ``--json`` key ``domain_adaptation``,
   the bundle's ``train`` record and the report.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from torch import nn

from vitkit.bundle import Bundle, update_meta, write_json_atomic
from vitkit.classify.config import DomainAdaptation, TrainConfig
from vitkit.classify.domain import (
    DannLoss,
    TargetBatches,
    domain_accuracy,
    probe_domain_accuracy,
)
from vitkit.classify.engine import Trainer
from vitkit.console import stderr_console
from vitkit.data import (
    ImageDataset,
    Preprocessing,
    Sample,
    scan,
    train_transform,
    validate_samples,
    write_skipped_csv,
)
from vitkit.data.validate import SkippedImage
from vitkit.errors import ConfigError, DataError
from vitkit.ood.detector import default_method, fit_detector
from vitkit.ood.drift import mmd_permutation_test
from vitkit.predictor.embed import Embeddings, embed_paths, embed_samples
from vitkit.predictor.predict import Predictor, expand_paths, load
from vitkit.predictor.variants import REFERENCE_VARIANT
from vitkit.report import write_report
from vitkit.workflows.evaluate import select_eval_split
from vitkit.workflows.ood import backbone_family, training_set

TARGET_SKIPPED = "target_skipped.csv"
RECORD_FILE = "domain_adaptation.json"
SOURCE_ONLY_DIR = "source-only"
UNLABELLED = "(unlabelled)"
MIN_TARGET_IMAGES = 4
"""At least 2 trained on and 2 held out (the feature test needs 2 rows a side)."""
SHIFT_PERMUTATIONS = 200


@dataclass
class TargetImages:
    """The target domain's images, validated."""

    folder: str
    adapt: list[Sample]  # unlabelled, trained on
    held_out: list[Sample]  # unlabelled, never trained on: domain accuracy and shift
    skipped: list[SkippedImage]
    evaluation: list[Sample]  # labelled (--target-eval), never trained on
    evaluation_split: str | None = None


def prepare_target(config: TrainConfig, classes: Sequence[str], run_dir: Path,
                   progress: bool = True) -> TargetImages | None:
    """The target images of ``config.domain`` (None without domain adaptation).

    Raises:
        DataError: the target folder is missing or holds fewer than 4 readable images, or the
            ``--target-eval`` folder has classes the training data does not.
    """
    domain = config.domain
    if domain.method == "none":
        return None
    folder = Path(domain.target)
    if not folder.is_dir():
        raise DataError(f"--target-domain {domain.target} is not a folder; give the folder of "
                        "unlabelled target-domain images (searched recursively).")
    paths, _ = expand_paths([str(folder)])
    report = validate_samples([Sample(p, UNLABELLED, None) for p in paths], config.max_pixels,
                              progress=progress, intensity=config.intensity)
    usable, skipped = report.usable, list(report.skipped)
    if len(usable) < MIN_TARGET_IMAGES:
        found = (f"{len(paths)} image file{'' if len(paths) == 1 else 's'}, {len(usable)} of "
                 "them readable" if paths else "no images (searched recursively for .jpg, "
                 ".png, .tif, …)")
        raise DataError(
            f"--target-domain {domain.target} holds {found}; domain adaptation needs at least "
            f"{MIN_TARGET_IMAGES} readable images (a share is held out to measure it). Point "
            "it at the folder of unlabelled images from the domain the model will work in "
            "(any layout: it is searched recursively).")
    adapt, held_out = _hold_out(usable, domain, config.seed)
    evaluation: list[Sample] = []
    split = None
    if domain.target_eval:
        split, evaluation = select_eval_split(scan(domain.target_eval).samples)
        unknown = sorted({s.label for s in evaluation} - set(classes))
        if unknown:
            raise DataError(
                f"--target-eval {domain.target_eval} has classes the training data does not: "
                f"{', '.join(unknown)} (the training classes: {', '.join(classes)}). Name its "
                "class folders like the training data's.")
        checked = validate_samples(evaluation, config.max_pixels, progress=progress,
                                   intensity=config.intensity)
        evaluation = checked.usable
        skipped += checked.skipped
    write_skipped_csv(skipped, run_dir / TARGET_SKIPPED)
    style = "yellow" if skipped else "green"
    stderr_console.print(
        f"[{style}]target domain: {len(adapt)} images to adapt to, {len(held_out)} held out"
        + (f", {len(evaluation)} labelled ({split})" if domain.target_eval else "")
        + (f"; {len(skipped)} skipped — see {run_dir / TARGET_SKIPPED}" if skipped else "")
        + "[/]")
    return TargetImages(domain.target, adapt, held_out, skipped, evaluation, split)


def _hold_out(samples: list[Sample], domain: DomainAdaptation, seed: int
              ) -> tuple[list[Sample], list[Sample]]:
    order = list(samples)
    random.Random(seed).shuffle(order)
    n_held = min(len(order) - 2, max(2, round(domain.holdout * len(order))))
    held = {s.path for s in order[:n_held]}
    return ([s for s in samples if s.path not in held], [s for s in samples if s.path in held])


def source_only_config(config: TrainConfig, run_dir: Path) -> TrainConfig:
    """The same recipe without the domain loss, into ``run_dir/source-only`` (and without the
    run's own comparisons: a scratch run belongs to the adapted run only)."""
    return config.model_copy(update={"domain": DomainAdaptation(), "compare_scratch": False,
                                     "out": str(run_dir / SOURCE_ONLY_DIR)})


class RunResult(Protocol):
    """What this module reads from (and adds to) a training run's result."""

    bundle: str
    run_dir: str
    val_accuracy: float
    domain_adaptation: dict[str, Any] | None


ResultT = TypeVar("ResultT", bound=RunResult)


@dataclass
class Baseline:
    """The finished source-only run."""

    run_dir: str
    bundle: str
    val_accuracy: float


def train_source_only(config: TrainConfig, run_dir: Path, resume: bool, progress: bool,
                      run: Callable[..., Any]) -> Baseline:
    """Trains the source-only baseline with ``run`` (:func:`~vitkit.workflows.train.
    run_training`, passed in: that module calls this one), resumes it, or, with ``resume``
    and a finished run there, reads it."""
    baseline = source_only_config(config, run_dir)
    summary = Path(baseline.out) / "summary.json"
    if not (resume and summary.is_file()):
        stderr_console.print(f"[bold]source-only baseline[/] (the same recipe without the "
                             f"domain loss) -> {baseline.out}")
        run(baseline, resume=resume, progress=progress)
        stderr_console.print("[bold]domain-adversarial run[/]")
    saved = json.loads(summary.read_text())
    return Baseline(str(saved["run_dir"]), str(saved["bundle"]), float(saved["val_accuracy"]))


def attach_dann(trainer: Trainer, config: TrainConfig, target: TargetImages,
                preprocessing: Preprocessing) -> DannLoss:
    """Makes ``trainer`` train with the DANN loss on ``target``'s images."""
    if isinstance(trainer.model.head, nn.ModuleList):
        raise ConfigError(f"{config.model} has two heads (class and distillation token); "
                          "domain adaptation needs a model with one. Choose another --model.")
    images = ImageDataset(target.adapt, {UNLABELLED: 0},
                          train_transform(preprocessing, config.augmentation), config.max_pixels,
                          config.intensity)
    steps_per_epoch = math.ceil(len(trainer.train_set) / config.batch_size)
    image_epochs = sum(n for stage, n in trainer.stage_epochs.items() if stage != "head")
    domain = config.domain
    hook = DannLoss(
        trainer.model, trainer.supervised_loss,
        TargetBatches(images, config.batch_size, steps_per_epoch, config.seed,
                      config.num_workers),
        total_steps=image_epochs * steps_per_epoch, weight=domain.weight,
        lambda_max=domain.lambda_max, lr_scale=domain.head_lr_scale, device=trainer.device,
        autocast=trainer.accelerator.autocast)
    trainer.loss_hook = hook
    return hook


@dataclass
class OnTarget:
    """One model measured on the target images (and the source's held-out ones)."""

    source_accuracy: float
    target_accuracy: float | None
    ood_share: float  # held-out target images its OOD detector calls unknown
    expected_ood_share: float  # the same detector's rate on in-distribution images
    ood_method: str
    mmd: float  # feature MMD² between source val and held-out target images
    mmd_p_value: float
    domain_probe_accuracy: float | None  # a fresh linear probe: source or target?
    domain_accuracy: float | None = None  # the trained domain head (adapted model only)

    def shift(self) -> dict[str, Any]:
        return {"ood_share": self.ood_share, "expected_ood_share": self.expected_ood_share,
                "ood_method": self.ood_method, "mmd": self.mmd, "mmd_p_value": self.mmd_p_value,
                "domain_probe_accuracy": self.domain_probe_accuracy}


def measure_on_target(bundle: str, source_accuracy: float, by_split: dict[str, list[Sample]],
                      target: TargetImages, config: TrainConfig, progress: bool = True,
                      domain_head: nn.Module | None = None) -> OnTarget:
    """Target accuracy (with ``--target-eval``), the OOD share and feature drift of the held-out
    target images against the source's validation images, and how well the domains can still
    be told apart."""
    predictor = load(bundle, variant=REFERENCE_VARIANT)
    batch, workers = config.batch_size, config.num_workers
    val = embed_samples(predictor, by_split["val"], batch, workers, progress,
                        "features (source val)")
    held = embed_paths(predictor, [s.path for s in target.held_out], batch, progress,
                       "features (target held out)")
    accuracy = None
    if target.evaluation:
        labelled = embed_samples(predictor, target.evaluation, batch, workers, progress,
                                 "features (target eval)")
        truth = labelled.targets if labelled.targets is not None else labelled.logits[:0, 0]
        accuracy = float((labelled.logits.argmax(1) == truth).float().mean())
    detector = predictor.ood or _fit_ood(predictor, by_split["train"], val, config, progress)
    flagged = detector.is_unknown(detector.score(held.features, held.logits))
    drift = mmd_permutation_test(val.features, held.features, SHIFT_PERMUTATIONS,
                                 seed=config.seed)
    return OnTarget(
        source_accuracy, accuracy, float(flagged.mean()), detector.expected_ood_share,
        detector.method, drift.statistic, drift.p_value,
        probe_domain_accuracy(val.features, held.features, seed=config.seed),
        None if domain_head is None else domain_accuracy(domain_head, val.features,
                                                         held.features))


def _fit_ood(predictor: Predictor, train_samples: list[Sample], val: Embeddings,
             config: TrainConfig, progress: bool):  # noqa: ANN202 - an OodDetector
    """The family's default detector, fitted in memory (the run had ``--no-ood``)."""
    train = embed_samples(predictor, train_samples, config.batch_size, config.num_workers,
                          progress, "features (source train)")
    model = predictor.torch_model()
    return fit_detector(default_method(backbone_family(model)), training_set(model, train),
                        val.features, val.logits)


def adaptation_record(config: TrainConfig, target: TargetImages, adapted: OnTarget,
                      before: OnTarget | None, baseline: Baseline | None,
                      adapted_steps: int) -> dict[str, Any]:
    """The ``domain_adaptation`` document (see docs/reference/json.md)."""
    domain = config.domain
    gain = None
    if before is not None and before.target_accuracy is not None \
            and adapted.target_accuracy is not None:
        gain = adapted.target_accuracy - before.target_accuracy
    return {
        "method": domain.method,
        "target": target.folder,
        "target_images": len(target.adapt),
        "target_held_out": len(target.held_out),
        "target_skipped": len(target.skipped),
        "target_eval": domain.target_eval,
        "target_eval_images": len(target.evaluation) if domain.target_eval else None,
        "source_accuracy": adapted.source_accuracy,
        "target_accuracy": adapted.target_accuracy,
        "domain_accuracy": adapted.domain_accuracy,
        "shift": {"before": None if before is None else before.shift(),
                  "after": adapted.shift()},
        "source_only": None if before is None or baseline is None else {
            "run_dir": baseline.run_dir, "bundle": baseline.bundle,
            "source_accuracy": before.source_accuracy,
            "target_accuracy": before.target_accuracy},
        "target_accuracy_gain": gain,
        "settings": {"weight": domain.weight, "lambda_max": domain.lambda_max,
                     "head_lr_scale": domain.head_lr_scale, "holdout": domain.holdout,
                     "schedule": "lambda_max * (2 / (1 + exp(-10 p)) - 1), p over the "
                                 "image-stage training batches",
                     "adapted_steps": adapted_steps},
    }


def finish_adaptation(result: ResultT, hook: DannLoss, target: TargetImages,
                      baseline: Baseline | None, config: TrainConfig,
                      by_split: dict[str, list[Sample]], progress: bool = True) -> ResultT:
    """Measures the adapted bundle (and the source-only one), writes the record everywhere it
    belongs and returns ``result`` with it."""
    hook.log()
    hook.close()
    run_dir = Path(result.run_dir)
    head = hook.trainable.classifier.cpu()
    adapted = measure_on_target(result.bundle, result.val_accuracy, by_split, target, config,
                                progress, head)
    before = None if baseline is None else measure_on_target(
        baseline.bundle, baseline.val_accuracy, by_split, target, config, progress)
    record = adaptation_record(config, target, adapted, before, baseline,
                               hook.trainable.step)
    write_json_atomic(run_dir / RECORD_FILE, record)
    summary_path = run_dir / "summary.json"
    write_json_atomic(summary_path, {**json.loads(summary_path.read_text()),
                                     "domain_adaptation": record})
    bundle = Bundle.open(result.bundle)
    update_meta(result.bundle, train={**bundle.meta.train, "domain_adaptation": record})
    write_report(run_dir)
    _say(record)
    result.domain_adaptation = record
    return result


def _say(record: dict[str, Any]) -> None:
    def show(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    after, before = record["shift"]["after"], record["shift"]["before"]
    line = (f"domain adaptation: source accuracy {show(record['source_accuracy'])}, target "
            f"accuracy {show(record['target_accuracy'])}")
    if record["source_only"] is not None:
        line += f" (source-only {show(record['source_only']['target_accuracy'])})"
    line += (f"; domain head accuracy {show(record['domain_accuracy'])} (0.5: domains "
             f"alike); target flagged OOD {after['ood_share']:.0%}")
    if before is not None:
        line += f" (source-only {before['ood_share']:.0%})"
    stderr_console.print(line)
