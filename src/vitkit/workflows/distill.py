"""`vitkit distill`: a student trained on DATA with a teacher bundle's logits in its loss.

The run is a normal training run (same engine, stages, checkpoints, run folder and bundle);
only the loss changes, through the engine's :class:`~vitkit.classify.engine.LossHook`.

What the teacher sees:
    * Augmented batches (and every mixup/cutmix batch): the student's batch itself,
      un-normalised, resized to the teacher's input size and normalised with the teacher's
      mean/std (:func:`~vitkit.classify.distill.renormalize`), so both see the same crop, flip
      and mix. The teacher runs once per training image per epoch.
    * Unaugmented batches (``augment: false``, and the head stage's cached features): every
      training image goes through the teacher once, with the teacher's own evaluation
      transform from its bundle, and the logits are cached by the image's position in the
      training set. Later epochs never run the teacher again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitkit.backbones import CreatedModel, ImageClassifier, check_model_name, create
from vitkit.bundle import Bundle, BundleMeta
from vitkit.classify.config import DistillConfig
from vitkit.classify.distill import (
    distillation_loss,
    feature_loss,
    hard_distillation_loss,
    renormalize,
    token_distillation_loss,
)
from vitkit.classify.engine import TrainBatch, Trainer, seed_everything
from vitkit.config import dump_config
from vitkit.console import make_progress, stderr_console
from vitkit.data import (
    ImageDataset,
    Preprocessing,
    class_counts,
    eval_transform,
    make_loader,
    train_transform,
)
from vitkit.errors import ConfigError, DataError
from vitkit.evaluate.classification import evaluate_samples
from vitkit.predictor.predict import Predictor, load
from vitkit.predictor.variants import REFERENCE_VARIANT
from vitkit.workflows.train import (
    CONFIG_FILE,
    TrainResult,
    _describe_counts,
    check_head_stage,
    finish_run,
    inherit_intensity,
    input_preprocessing,
    prepare_data,
    refuse_to_overwrite,
    removed_on_user_error,
)


@dataclass
class DistillResult(TrainResult):
    """`vitkit distill --json`: the keys of `vitkit train --json` plus ``teacher``."""

    teacher: dict[str, Any] = field(default_factory=dict)


class TeacherLoss:
    """The engine's loss hook: the configured distillation loss against a teacher.

    Args:
        teacher: The teacher bundle's predictor (``predictor(batch) -> logits``).
        config: The run's config (mode, temperature, alpha, augment, label smoothing,
            feature weight).
        student_pre: The student's preprocessing (its batches are normalised with it).
        columns: For each of the student's classes, the teacher's logit column.
        device: Where the loss is computed (the student's device).
        student: The student; needed with a feature weight (its head's input, the pre-logits
            embedding, is read on every step and mapped onto the teacher's by ``trainable``).
    """

    def __init__(self, teacher: Predictor, config: DistillConfig, student_pre: Preprocessing,
                 columns: list[int], device: torch.device,
                 student: ImageClassifier | None = None) -> None:
        self.teacher = teacher
        self.config = config
        self.student_pre = student_pre
        self.columns = torch.tensor(columns)
        self.device = device
        self.cache: torch.Tensor | None = None  # (N, C) teacher logits per training image
        self.feature_cache: torch.Tensor | None = None  # (N, D_teacher) with a feature weight
        self.teacher_images = 0  # images the teacher has run on, for the record and tests
        self.trainable: nn.Linear | None = None  # the engine trains and checkpoints it
        self._student_features: torch.Tensor | None = None
        self._capture: torch.utils.hooks.RemovableHandle | None = None
        if config.feature_weight > 0:
            if student is None or isinstance(student.head, nn.ModuleList):
                raise ConfigError("feature distillation needs a student with one head (a "
                                  "distilled DeiT has two); set feature_weight to 0.")
            teacher_dim = teacher.torch_model().num_features
            self.trainable = nn.Linear(student.num_features, teacher_dim).to(device)
            self._capture = student.head.register_forward_hook(self._capture_student_features)

    def _capture_student_features(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...],
                                  _output: torch.Tensor) -> None:
        self._student_features = inputs[0].flatten(1)

    def close(self) -> None:
        """Stops reading the student's features (training is over)."""
        if self._capture is not None:
            self._capture.remove()
            self._capture = None
        self._student_features = None

    def fill_cache(self, train_images: ImageDataset, progress: bool = True) -> None:
        """Runs the teacher once over ``train_images`` (in the training set's order)."""
        dataset = ImageDataset(train_images.samples, train_images.class_to_idx,
                               self.teacher.transform, train_images.max_pixels,
                               train_images.intensity)
        loader = make_loader(dataset, batch_size=self.config.batch_size, shuffle=False, seed=0,
                             num_workers=self.config.num_workers)
        logits, features = [], []
        with make_progress(progress) as bar:
            task = bar.add_task("teacher logits", total=len(dataset), stats="") if bar else None
            for images, _ in loader:
                batch_logits, batch_features = self._teacher(images)
                logits.append(batch_logits.cpu())
                if batch_features is not None:
                    features.append(batch_features.cpu())
                if bar is not None and task is not None:
                    bar.update(task, advance=len(images))
        self.cache = torch.cat(logits)
        self.feature_cache = torch.cat(features) if features else None

    def uses_cache(self, batch: TrainBatch) -> bool:
        unmixed = batch.soft_targets is None
        return batch.stage == "head" or (not self.config.augment and unmixed)

    def teacher_outputs(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C) teacher logits in the student's class order, and with a feature weight the
        teacher's (B, D) embeddings, on the loss's device."""
        if self.uses_cache(batch):
            if self.cache is None:
                raise RuntimeError("teacher cache is empty: call fill_cache() before training")
            rows = batch.indices.cpu()
            features = None if self.feature_cache is None else self.feature_cache[rows]
            return (self.cache[rows].to(self.device),
                    None if features is None else features.to(self.device))
        pre = self.teacher.preprocessing
        images = renormalize(batch.inputs.detach(), self.student_pre.mean, self.student_pre.std,
                             pre.mean, pre.std, pre.input_size)  # (B, 3, h, w)
        return self._teacher(images)

    def _teacher(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.teacher_images += len(images)
        features = None
        if self.trainable is None:
            logits = self.teacher(images)  # (B, C_teacher), an inference tensor on the CPU
        else:
            model = self.teacher.torch_model()
            with torch.no_grad():
                features, logits = model.features_and_logits(images.to(self.teacher.device))
            features = features.float().to(self.device)
        # index_select makes a normal tensor: inference tensors cannot be saved for backward.
        return logits.float().index_select(1, self.columns.to(logits.device)).to(self.device), \
            features

    def __call__(self, outputs: Any, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        teacher, teacher_features = self.teacher_outputs(batch)
        targets = batch.soft_targets if batch.soft_targets is not None else batch.targets
        cfg = self.config
        if isinstance(outputs, tuple):  # a distilled DeiT in training mode: (cls, dist)
            cls_logits, dist_logits = outputs
            loss = token_distillation_loss(cls_logits, dist_logits, teacher, targets, cfg.alpha,
                                           cfg.label_smoothing)
            return loss, (cls_logits.detach() + dist_logits.detach()) / 2
        if cfg.mode == "hard":
            loss = hard_distillation_loss(outputs, teacher, targets, cfg.alpha,
                                          cfg.label_smoothing)
        else:
            loss = distillation_loss(outputs, teacher, targets, cfg.temperature, cfg.alpha,
                                     cfg.label_smoothing)
        # The head stage trains on cached student features: nothing for a feature term to move.
        if self.trainable is not None and batch.stage != "head":
            if self._student_features is None or teacher_features is None:
                raise RuntimeError("no student features captured for the feature term")
            loss = loss + cfg.feature_weight * feature_loss(
                self._student_features, teacher_features, self.trainable)
        return loss, outputs


def run_distill(config: DistillConfig, resume: bool = False,
                progress: bool = True, teacher_bundle: Bundle | None = None) -> DistillResult:
    """Distils the teacher bundle into the configured student and writes the run and bundle.

    ``resume`` continues a killed run from its last checkpoint (the teacher is stateless: its
    logits cache, when there is one, is recomputed). ``teacher_bundle``: ``config.teacher``
    already opened, not read again.
    """
    started = time.perf_counter()
    run_dir = Path(config.out)
    check_model_name(config.model)
    refuse_to_overwrite(run_dir, resume)
    opened_teacher = _read_teacher(config.teacher, teacher_bundle)
    teacher_meta = opened_teacher.meta
    config = inherit_intensity(config, opened_teacher, "A student learns from the teacher's "
                               "view of each image")
    new_folder = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, run_dir / CONFIG_FILE)

    with removed_on_user_error(run_dir, new_folder):
        samples, skipped = prepare_data(config, run_dir, progress)
        classes = sorted({s.label for s in samples})
        columns = _teacher_columns(config.teacher, teacher_meta.labels, classes)
    by_split = {name: [s for s in samples if s.split == name] for name in ("train", "val", "test")}
    stderr_console.print(_describe_counts(class_counts(samples)))

    seed_everything(config.seed)
    created = create(config.model, num_classes=len(classes), weights=config.weights,
                     timm_kwargs=config.timm_kwargs)
    student = _student(created, config)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    created.preprocessing = input_preprocessing(created, config)
    pre = created.preprocessing
    evaluation_tf = eval_transform(pre)
    training_tf = train_transform(pre, config.augmentation) if config.augment else evaluation_tf
    train_eval_set = ImageDataset(by_split["train"], class_to_idx, evaluation_tf,
                                  config.max_pixels, config.intensity)
    trainer = Trainer(
        student, config,
        train_set=ImageDataset(by_split["train"], class_to_idx, training_tf, config.max_pixels,
                               config.intensity),
        train_eval_set=train_eval_set,
        val_set=ImageDataset(by_split["val"], class_to_idx, evaluation_tf, config.max_pixels,
                             config.intensity),
        run_dir=run_dir, show_progress=progress,
    )
    teacher = load(opened_teacher, device=str(trainer.device),
                   variant=config.teacher_variant or REFERENCE_VARIANT, ood=False)
    teacher_val = evaluate_samples(teacher, by_split["val"], config.batch_size,
                                   config.num_workers, progress, "evaluating teacher on val")
    teacher_acc = teacher_val.metrics.accuracy
    stderr_console.print(f"teacher {teacher_meta.backbone.get('name')} "
                         f"val accuracy {teacher_acc:.3f}; student {config.model} "
                         f"({created.spec.weights} weights), mode {config.mode}")
    hook = TeacherLoss(teacher, config, pre, columns, trainer.device, student)
    if "head" in trainer.stages or not config.augment:
        hook.fill_cache(train_eval_set, progress)
    trainer.loss_hook = hook
    fit = trainer.fit(resume=resume)
    hook.close()
    teacher_record = {
        "bundle": str(config.teacher), "model": teacher_meta.backbone.get("name"),
        "variant": teacher.variant.name, "val_accuracy": teacher_acc, "mode": config.mode,
        "temperature": config.temperature, "alpha": config.alpha,
        "feature_weight": config.feature_weight,
        "cached": hook.cache is not None, "forward_images": hook.teacher_images,
    }
    if not trainer.accelerator.is_main_process:
        return DistillResult("", fit.best_val_accuracy, fit.epochs_run, len(skipped),
                             str(run_dir), "", fit.best_epoch, len(by_split["train"]),
                             len(by_split["val"]), teacher=teacher_record)

    distilled_from = {**teacher_record, "bundle": str(Path(config.teacher).resolve()),
                      "bundle_val_accuracy": _stored_val_accuracy(teacher_meta)}
    return finish_run(trainer, fit, created, config, samples, len(skipped), run_dir, started,
                      progress, extra_train={"distilled_from": distilled_from},
                      result_type=DistillResult, teacher=teacher_record)


def _read_teacher(path: str, opened: Bundle | None = None) -> Bundle:
    if not path:
        raise ConfigError("no teacher given: pass the teacher's bundle folder as TEACHER_BUNDLE.")
    if opened is not None and opened.path != Path(path):
        raise ValueError(f"the opened teacher {opened} is not config.teacher {path}")
    teacher = Bundle.open(opened or path)
    if teacher.meta.task != "classify":
        raise ConfigError(f"the teacher {path} is a '{teacher.meta.task}' bundle; distillation "
                          "needs a classifier bundle, such as the one `vitkit train` writes.")
    return teacher


def _teacher_columns(path: str, teacher_labels: list[str], classes: list[str]) -> list[int]:
    """For each of DATA's classes (in the student's order), the teacher's logit column."""
    if sorted(teacher_labels) != classes:
        only_teacher = sorted(set(teacher_labels) - set(classes))
        only_data = sorted(set(classes) - set(teacher_labels))
        raise DataError(
            f"the teacher {path} knows the classes {', '.join(teacher_labels)}, but the data "
            f"has {', '.join(classes)} (only the teacher: {', '.join(only_teacher) or 'none'}; "
            f"only the data: {', '.join(only_data) or 'none'}). Distil on data with the "
            "teacher's classes, or train a teacher on this data first."
        )
    return [teacher_labels.index(c) for c in classes]


def _student(created: CreatedModel, config: DistillConfig) -> ImageClassifier:
    timm_model = created.model.model
    distilled = created.model.source == "timm" and hasattr(timm_model, "head_dist")
    if config.mode == "token" and not distilled:
        raise ConfigError(
            f"--mode token needs a student with a distillation token, such as "
            f"deit_tiny_distilled_patch16_224; {config.model} has none. Use --mode soft or hard."
        )
    check_head_stage(created, config)
    created.zero_new_head()  # a distilled DeiT: both heads
    if distilled:
        timm_model.set_distilled_training(config.mode == "token")  # type: ignore[operator]
    return created.model


def _stored_val_accuracy(meta: BundleMeta) -> float | None:
    value = meta.train.get("metrics", {}).get("val", {}).get("accuracy")
    return float(value) if isinstance(value, int | float) else None
