"""The staged fine-tuning loop: head on cached features, then top blocks, then everything.

One generic loop serves all stages; a stage only decides which parameters train, at which
rates, and whether the backbone runs (it does not in the head stage: features are cached).
Every epoch ends with a checkpoint, so a killed run resumes where it stopped and, because each
epoch reseeds from (seed, epoch), ends exactly where an uninterrupted run would.
A :class:`LossHook` replaces the cross-entropy (distillation uses it); it gets each training
image's position in the training set, so it can cache per-image values.

Over ~450 lines on purpose: :class:`Trainer` is one loop (stages, AMP, accumulation, EMA,
early stop, checkpoint/resume) whose steps share its state; schedules
(:mod:`vitkit.classify.schedule`), EMA and checkpoints already live in modules of their own.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from vitkit.atomic import atomic_path, write_csv_atomic
from vitkit.backbones import ImageClassifier
from vitkit.bundle import save_weights
from vitkit.classify.checkpoint import (
    LAST_CHECKPOINT,
    last_checkpoint,
    restore_progress,
    save_checkpoint,
)
from vitkit.classify.config import TrainConfig
from vitkit.classify.ema import WeightAverage
from vitkit.classify.features import extract_features
from vitkit.classify.grad_checkpointing import enable_grad_checkpointing
from vitkit.classify.progressive import ProgressiveResize
from vitkit.classify.schedule import apply_trainability, make_optimizer, plan_stage, warmup_cosine
from vitkit.console import make_progress, stderr_console
from vitkit.data import ImageDataset, make_loader

STAGE_ORDER = ("head", "top", "full")
METRIC_COLUMNS = (
    "epoch", "stage", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "images_per_s",
    "seconds",
)


@dataclass
class EpochRecord:
    epoch: int
    stage: str
    lr: float
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    images_per_s: float
    seconds: float
    image_size: int | None = None  # the training images' side, with progressive resizing


@dataclass
class TrainBatch:
    """One training step's batch, as a :class:`LossHook` sees it."""

    stage: str
    inputs: torch.Tensor  # what the model saw: images (mixed under mixup), features in "head"
    targets: torch.Tensor  # (B,) class indices
    soft_targets: torch.Tensor | None  # (B, C) mixup/cutmix targets, else None
    indices: torch.Tensor  # (B,) positions of the images in the training set


class LossHook(Protocol):
    """Replaces the engine's cross-entropy, e.g. with a distillation loss.

    A hook with a ``trainable`` attribute (an ``nn.Module`` or None) has parameters of its own
    (a feature projection, a domain classifier): they train with the model in the image stages
    at ``trainable_lr_scale`` (default 1) times the stage's learning rate, and their state
    (buffers too) goes into the checkpoint so a resumed run continues them. A hook that adds a
    term to the usual loss gets that loss from :meth:`Trainer.supervised_loss`.
    """

    def __call__(self, outputs: Any, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (the scalar loss, (B, C) logits the training accuracy is measured on)."""
        ...


@dataclass
class FitResult:
    history: list[EpochRecord]
    best_epoch: int
    best_val_accuracy: float
    epochs_run: int
    stopped_early: list[str] = field(default_factory=list)


@dataclass
class _Progress:
    """What a checkpoint must hold to continue the run exactly."""

    stage_index: int = 0
    stage_epoch: int = 0
    epoch: int = 0
    best_acc: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_precision(config: TrainConfig, device: torch.device) -> str:
    """Maps ``auto`` to what is fastest and safe on this device.

    On CPUs bf16 autocast made training 3-20x slower than fp32 in our measurements (timm
    EfficientNet-Lite0 and DeiT-tiny, fwd+bwd at batch 32), so ``auto`` keeps fp32 there.
    """
    if config.precision != "auto":
        return config.precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Runs the stages of ``config`` on ``model``, writing logs and checkpoints to ``run_dir``."""

    def __init__(
        self,
        model: ImageClassifier,
        config: TrainConfig,
        train_set: ImageDataset,
        train_eval_set: Dataset,
        val_set: ImageDataset,
        run_dir: Path,
        show_progress: bool = True,
        loss_hook: LossHook | None = None,
        progressive: ProgressiveResize | None = None,
    ) -> None:
        self.config = config
        self.loss_hook = loss_hook
        self.progressive = progressive
        if config.grad_checkpointing:
            enable_grad_checkpointing(model)
        self.train_set, self.train_eval_set, self.val_set = train_set, train_eval_set, val_set
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        self.show_progress = show_progress
        cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
        device = torch.device("cpu" if cpu else "cuda")
        self.precision = resolve_precision(config, device)
        self.accelerator = Accelerator(
            cpu=cpu,
            mixed_precision="no" if self.precision == "fp32" else self.precision,
            gradient_accumulation_steps=config.grad_accum,
        )
        self.device = self.accelerator.device
        # Channels-last makes CPU convolutions ~1.5x faster (oneDNN); transformers ignore it.
        # (two calls: torch's stubs have no overload for a device with a memory format)
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        self.stage_epochs = config.stage_epochs()
        self.stages = [s for s in STAGE_ORDER if s in self.stage_epochs]
        self._writer: Any = None
        self._ema: WeightAverage | None = None
        self._class_weights = self._loss_weights()

    # ---------------------------------------------------------------- run
    def fit(self, resume: bool = False) -> FitResult:
        state = _Progress()
        checkpoint = self._load_resume_state(state) if resume else None
        if state.epoch == 0:
            # Features cached by an earlier start that died before its first checkpoint may
            # come from other data (or be half written): only a resumed run reuses them.
            self._feature_cache.unlink(missing_ok=True)
        for index in range(state.stage_index, len(self.stages)):
            stage = self.stages[index]
            if index != state.stage_index:
                state.stage_index, state.stage_epoch, state.bad_epochs = index, 0, 0
            self._run_stage(stage, state, checkpoint if index == state.stage_index else None)
            checkpoint = None
        self._close_writer()
        history = [EpochRecord(**row) for row in state.history]
        return FitResult(history, state.best_epoch, state.best_acc, state.epoch,
                         state.stopped_early)

    def _run_stage(self, stage: str, state: _Progress, checkpoint: dict[str, Any] | None) -> None:
        n_epochs = self.stage_epochs[stage]
        if state.stage_epoch >= n_epochs or stage in state.stopped_early:
            return
        stage_cfg = getattr(self.config.stages, stage)
        plan = plan_stage(
            self.model, stage,
            top_blocks=getattr(stage_cfg, "blocks", 0),
            layer_decay=getattr(stage_cfg, "layer_decay", 1.0),
        )
        apply_trainability(self.model, plan)
        self._plan = plan
        hook_module = self._hook_module()
        extra = list(hook_module.parameters()) if hook_module and stage != "head" else []
        optimizer = make_optimizer(plan, stage_cfg.lr, self.config.weight_decay, extra,
                                   float(getattr(self.loss_hook, "trainable_lr_scale", 1.0)))
        if stage == "head":
            train_loader, val_data = self._cached_feature_loaders(stage_cfg.batch_size)
        else:
            train_loader = self._image_loader(_Indexed(self.train_set), shuffle=True, seed=0)
            val_data = None
        steps_per_epoch = math.ceil(len(train_loader) / self.config.grad_accum)
        factor = warmup_cosine(n_epochs * steps_per_epoch, self.config.warmup,
                               self.config.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        if checkpoint is not None and checkpoint.get("optimizer") is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
        model, optimizer = self.accelerator.prepare(self.model, optimizer)
        self._ema = None
        if self.config.ema is not None and stage != "head":
            self._ema = WeightAverage(self.model, self.config.ema)
            if checkpoint is not None and checkpoint.get("ema") is not None:
                self._ema.load_state_dict(checkpoint["ema"])
        while state.stage_epoch < n_epochs:
            epoch_seed = self.config.seed * 100_003 + state.epoch
            seed_everything(epoch_seed)
            if stage != "head":
                train_set = self.progressive.train_set(self.train_set, stage, state.stage_epoch) \
                    if self.progressive is not None else self.train_set
                train_loader = self.accelerator.prepare(
                    self._image_loader(_Indexed(train_set), shuffle=True, seed=epoch_seed)
                )
            record = self._run_epoch(stage, model, optimizer, scheduler, train_loader, val_data,
                                     state.epoch + 1, n_epochs, state.stage_epoch + 1)
            state.epoch += 1
            state.stage_epoch += 1
            state.history.append(asdict(record))
            with self._averaged():
                improved = self._track_best(record, state)
            patience = self.config.early_stopping
            if patience is not None and state.bad_epochs >= patience.patience \
                    and state.stage_epoch < n_epochs:
                state.stopped_early.append(stage)
                stderr_console.print(
                    f"[yellow]early stop[/]: stage '{stage}' did not improve for "
                    f"{state.bad_epochs} epoch{'' if state.bad_epochs == 1 else 's'}; moving on."
                )
            self._log_epoch(record, improved)
            self._save_state(state, optimizer, scheduler)
            if stage in state.stopped_early:
                break

    # ---------------------------------------------------------------- epochs
    def _run_epoch(self, stage, model, optimizer, scheduler, train_loader, val_data,
                   epoch: int, n_stage_epochs: int, stage_epoch: int) -> EpochRecord:
        mixer = self._mixer() if stage != "head" else None
        total, correct, loss_sum = 0, 0, 0.0
        start = time.perf_counter()
        description = f"epoch {epoch}/{sum(self.stage_epochs.values())} {stage} " \
                      f"{stage_epoch}/{n_stage_epochs}"
        head = self.model.head
        with make_progress(self.show_progress and self.accelerator.is_main_process) as bar:
            task = bar.add_task(description, total=len(train_loader), stats="") if bar else None
            for inputs, targets, indices in train_loader:
                inputs, targets = inputs.to(self.device), targets.to(self.device)
                with self.accelerator.accumulate(model):
                    soft = None
                    if mixer is not None and len(targets) % 2 == 0:
                        inputs, soft = mixer(inputs, targets)
                    outputs = head(inputs) if stage == "head" else model(inputs)
                    seen = TrainBatch(stage, inputs, targets, soft, indices)
                    if self.loss_hook is not None:
                        loss, logits = self.loss_hook(outputs, seen)
                    else:
                        logits, loss = outputs, self.supervised_loss(outputs, seen)
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients and self.config.clip_grad:
                        self.accelerator.clip_grad_norm_(
                            [p for p in model.parameters() if p.requires_grad],
                            self.config.clip_grad,
                        )
                    optimizer.step()
                    if self.accelerator.sync_gradients:
                        scheduler.step()
                        if self._ema is not None:
                            self._ema.update(self.model)
                    optimizer.zero_grad(set_to_none=True)
                batch = len(targets)
                total += batch
                loss_sum += float(loss.detach()) * batch
                correct += int((logits.detach().argmax(1) == targets).sum())
                if bar is not None and task is not None:
                    rate = total / max(1e-9, time.perf_counter() - start)
                    bar.update(task, advance=1, stats=f"loss {loss_sum / total:.3f} "
                               f"acc {correct / total:.3f} {rate:.1f} img/s")
            seconds = time.perf_counter() - start
            step = None
            if bar is not None and task is not None and stage != "head":
                # Validating hundreds of images takes seconds: the bar goes on through it.
                n_val = math.ceil(len(self.val_set) / self.config.batch_size)
                bar.update(task, total=len(train_loader) + n_val,
                           description=f"{description} + val")
                step = lambda: bar.advance(task)  # noqa: E731
            with self._averaged():
                val_loss, val_acc = self._validate(stage, model, val_data, step)
        return EpochRecord(
            epoch=epoch, stage=stage, lr=float(optimizer.param_groups[0]["lr"]),
            train_loss=loss_sum / max(1, total), train_acc=correct / max(1, total),
            val_loss=val_loss, val_acc=val_acc,
            images_per_s=total / max(seconds, 1e-9), seconds=seconds,
            image_size=self.progressive.size(stage, stage_epoch - 1)
            if self.progressive is not None else None,
        )

    def supervised_loss(self, logits: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
        """The loss without a hook: cross-entropy to mixup/cutmix's soft targets, else to the
        labels with the class weights and label smoothing."""
        if batch.soft_targets is not None:
            return SoftTargetCrossEntropy()(logits, batch.soft_targets)
        return F.cross_entropy(logits, batch.targets, weight=self._class_weights,
                               label_smoothing=self.config.label_smoothing)

    @torch.no_grad()
    def _validate(self, stage: str, model, val_data,
                  step: Callable[[], None] | None = None) -> tuple[float, float]:
        if stage == "head":
            feats, labels = val_data
            logits = self.model.head(feats.to(self.device)).float()
            labels = labels.to(self.device)
        else:
            model.eval()
            loader = self.accelerator.prepare(self._image_loader(self.val_set, shuffle=False,
                                                                 seed=0))
            chunks, targets = [], []
            for images, y in loader:
                out = model(images.to(self.device)).float()
                out, y = self.accelerator.gather_for_metrics((out, y.to(self.device)))
                chunks.append(out)
                targets.append(y)
                if step is not None:
                    step()
            logits, labels = torch.cat(chunks), torch.cat(targets)
            apply_trainability(self.model, self._plan)
        loss = float(F.cross_entropy(logits, labels))
        acc = float((logits.argmax(1) == labels).float().mean())
        return loss, acc

    def _loss_weights(self) -> torch.Tensor | None:
        """Per-class loss weights n / (k * n_c) ("balanced"), so a class with a third of the
        images is not learnt as "never"; None when off or when the classes are balanced."""
        if self.config.class_weights != "balanced":
            return None
        index = self.train_set.class_to_idx
        k = len(index)
        labels = torch.tensor([index[s.label] for s in self.train_set.samples], dtype=torch.long)
        counts = torch.bincount(labels, minlength=k).float()
        if counts.min() == counts.max() or counts.min() == 0:
            return None
        return (counts.sum() / (k * counts)).to(self.device)

    def _averaged(self) -> Any:
        """Inside: the model holds the moving average of its weights, when the stage keeps
        one (validation and the best checkpoint see the average; training the raw weights)."""
        return self._ema.applied(self.model) if self._ema is not None else nullcontext()

    def _mixer(self) -> Mixup | None:
        if self.config.mixup <= 0 and self.config.cutmix <= 0:
            return None
        return Mixup(
            mixup_alpha=self.config.mixup, cutmix_alpha=self.config.cutmix,
            label_smoothing=self.config.label_smoothing,
            num_classes=len(self.train_set.class_to_idx),
        )

    # ---------------------------------------------------------------- data
    def _image_loader(self, dataset: Dataset, shuffle: bool, seed: int) -> DataLoader:
        return make_loader(dataset, batch_size=self.config.batch_size, shuffle=shuffle, seed=seed,
                           num_workers=self.config.num_workers)

    @property
    def _feature_cache(self) -> Path:
        return self.run_dir / "cache" / "head_features.safetensors"

    def _cached_feature_loaders(self, batch_size: int):
        """Features of the frozen backbone for the train and val images, computed once.

        They are computed with the evaluation transform: the head-only stage trades
        augmentation for a single forward pass over the data (the later stages augment).
        """
        cache = self._feature_cache
        if cache.is_file():
            tensors = load_file(str(cache))
        else:
            tensors = {}
            with make_progress(self.show_progress) as bar:
                for name, dataset in (("train", self.train_eval_set), ("val", self.val_set)):
                    task = bar.add_task(f"caching {name} features", total=len(dataset),  # type: ignore[arg-type]
                                        stats="") if bar else None
                    step = (lambda n, t=task: bar.update(t, advance=n)) if bar else None
                    loader = self._image_loader(dataset, shuffle=False, seed=0)
                    feats, labels = extract_features(self.model, loader, self.device, step)
                    tensors[f"{name}_features"], tensors[f"{name}_labels"] = feats, labels
            with atomic_path(cache) as tmp:
                save_file(tensors, str(tmp))
        generator = torch.Generator().manual_seed(self.config.seed)
        train = TensorDataset(tensors["train_features"], tensors["train_labels"],
                              torch.arange(len(tensors["train_labels"])))
        loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator)
        return _ReseededLoader(loader, generator, self), (tensors["val_features"],
                                                          tensors["val_labels"])

    # ---------------------------------------------------------------- state
    def _track_best(self, record: EpochRecord, state: _Progress) -> bool:
        min_delta = self.config.early_stopping.min_delta if self.config.early_stopping else 0.0
        better = record.val_acc > state.best_acc + min_delta or (
            record.val_acc >= state.best_acc and record.val_loss < state.best_loss
        )
        if better:
            state.best_acc, state.best_loss, state.best_epoch = (
                record.val_acc, record.val_loss, record.epoch)
            state.bad_epochs = 0
            best = self.ckpt_dir / "best.safetensors"
            with atomic_path(best) as tmp:
                save_weights(self.accelerator.unwrap_model(self.model).model, tmp)
        else:
            state.bad_epochs += 1
        return better

    def _save_state(self, state: _Progress, optimizer, scheduler) -> None:
        if not self.accelerator.is_main_process:
            return
        save_checkpoint(
            {
                "progress": asdict(state),
                "model": self.accelerator.unwrap_model(self.model).model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "stages": list(self.stages),
                "loss_hook": (module.state_dict()
                              if (module := self._hook_module()) is not None else None),
                "ema": self._ema.state_dict() if self._ema is not None else None,
            },
            self.ckpt_dir / LAST_CHECKPOINT,
        )
        _write_metrics_csv(self.run_dir / "metrics.csv", state.history)

    def _load_resume_state(self, state: _Progress) -> dict[str, Any] | None:
        checkpoint = last_checkpoint(self.ckpt_dir)
        if checkpoint is None:
            return None
        self.model.model.load_state_dict(checkpoint["model"])
        module = self._hook_module()
        if module is not None and checkpoint.get("loss_hook") is not None:
            module.load_state_dict(checkpoint["loss_hook"])
        going_on = restore_progress(state, checkpoint, self.stages, self.stage_epochs)
        return checkpoint if going_on else None

    def _hook_module(self) -> nn.Module | None:
        module = getattr(self.loss_hook, "trainable", None)
        return module if isinstance(module, nn.Module) else None

    def _log_epoch(self, record: EpochRecord, improved: bool) -> None:
        if not self.accelerator.is_main_process:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"),
                                         purge_step=record.epoch)
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
            self._writer.add_scalar(key, getattr(record, key), record.epoch)
        self._writer.flush()
        mark = (f" at {record.image_size} px" if record.image_size else "") \
            + (" [green]best[/]" if improved else "")
        stderr_console.print(
            f"epoch {record.epoch} ({record.stage}): train loss {record.train_loss:.3f} "
            f"acc {record.train_acc:.3f} | val loss {record.val_loss:.3f} "
            f"acc {record.val_acc:.3f} | {record.images_per_s:.1f} img/s{mark}"
        )

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _Indexed(Dataset[tuple[torch.Tensor, int, int]]):
    """Adds each item's position, so a loss hook can look up what it cached per image."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image, target = self.dataset[i]
        return image, target, i


class _ReseededLoader:
    """Reseeds the feature loader's shuffling from the trainer's epoch seed each epoch."""

    def __init__(self, loader: DataLoader, generator: torch.Generator, trainer: Trainer) -> None:
        self.loader, self.generator, self.trainer = loader, generator, trainer

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):  # noqa: ANN204
        self.generator.manual_seed(int(torch.initial_seed()) % 2**63)
        return iter(self.loader)


def _write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    # the image_size column only where progressive resizing changed the size
    columns = METRIC_COLUMNS + (("image_size",) if any(r.get("image_size") for r in history)
                                else ())
    write_csv_atomic(path, columns, ([
        f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, "")
        for k in columns] for row in history))
