"""The staged loop for tasks whose model is an encoder plus a task head (segmentation,
detection): the head first on a frozen pretrained encoder, then everything, the encoder at a
lower rate.

It keeps the contract of the classifier's engine (:mod:`vitkit.classify.engine`): AdamW with
warm-up + cosine per stage, Accelerate for devices and mixed precision, gradient accumulation,
early stopping on the task's metric, the best weights kept, and a checkpoint after every epoch
from which a killed run resumes exactly (each epoch reseeds from ``(seed, epoch)``). What a
task changes — how a batch becomes a loss, how the validation images become one figure — is
a :class:`TaskStep`; the classifier keeps its own engine because its head stage trains on
cached features and mixes images (mixup), which a dense task cannot do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from accelerate import Accelerator
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader

from vitkit.atomic import atomic_path, write_csv_atomic
from vitkit.bundle import save_weights
from vitkit.classify.checkpoint import (
    LAST_CHECKPOINT,
    last_checkpoint,
    restore_progress,
    save_checkpoint,
)
from vitkit.classify.engine import seed_everything
from vitkit.classify.schedule import warmup_cosine
from vitkit.console import make_progress, stderr_console
from vitkit.errors import ConfigError

STAGES = ("head", "full")
COLUMNS = ("epoch", "stage", "lr", "train_loss", "val_loss", "metric", "images_per_s",
           "seconds")


class StagedConfig(BaseModel):
    """How a dense task trains (``vitkit segment train`` / ``vitkit detect train`` options)."""

    model_config = ConfigDict(extra="forbid")

    head_epochs: int = Field(2, ge=0, description="epochs on a frozen encoder")
    full_epochs: int = Field(8, ge=0, description="epochs with every layer training")
    lr: float = Field(1e-3, gt=0)
    encoder_lr_scale: float = Field(0.1, gt=0, le=1,
                                    description="the encoder's rate in the full stage, x lr")
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup: float = Field(0.1, ge=0, lt=1, description="share of each stage's steps")
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    clip_grad: float | None = Field(5.0, gt=0)
    patience: int | None = Field(5, ge=1, description="early stop after this many epochs "
                                 "without a better metric; None: never")
    min_delta: float = Field(0.0, ge=0, description="how much better counts as better")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    seed: int = 0

    def stage_epochs(self) -> dict[str, int]:
        epochs = {"head": self.head_epochs, "full": self.full_epochs}
        chosen = {stage: n for stage, n in epochs.items() if n > 0}
        if not chosen:
            raise ConfigError("no epochs to train: give --head-epochs or --full-epochs above 0.")
        return chosen


@dataclass
class Evaluation:
    """One pass over the validation images: the figure that chooses the best epoch
    (higher is better) and the loss when the task has one there."""

    metric: float
    loss: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


class TaskStep(Protocol):
    """What a task tells the loop."""

    metric_name: str  # e.g. "dice", "map_50"

    def encoder_parameters(self, model: nn.Module) -> Sequence[nn.Parameter]:
        """The pretrained part, frozen in the head stage and slowed in the full one."""
        ...

    def training_loss(self, model: nn.Module, batch: Any, device: torch.device
                      ) -> tuple[torch.Tensor, int]:
        """The scalar loss of one batch and how many images it held."""
        ...

    def evaluate(self, model: nn.Module, batches: Iterable[Any], device: torch.device,
                 step: Callable[[], None] | None = None) -> Evaluation:
        """The model (in eval mode) over the validation batches."""
        ...


@dataclass
class EpochRow:
    epoch: int
    stage: str
    lr: float
    train_loss: float
    val_loss: float | None
    metric: float
    images_per_s: float
    seconds: float


@dataclass
class _Progress:
    """What a checkpoint must hold to continue the run exactly."""

    stage_index: int = 0
    stage_epoch: int = 0
    epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StagedResult:
    history: list[EpochRow]
    best_epoch: int
    best_metric: float
    epochs_run: int
    stopped_early: list[str]
    best_weights: Path


class StagedTrainer:
    """Runs the stages of ``config`` on ``model``; logs and checkpoints go to ``run_dir``.

    ``train_loader(seed)`` makes the shuffled training loader of one epoch (the loop passes
    the epoch's seed, so shuffling and augmentation replay exactly after a resume).
    """

    def __init__(self, model: nn.Module, step: TaskStep, config: StagedConfig,
                 train_loader: Callable[[int], DataLoader], val_loader: DataLoader,
                 run_dir: Path, show_progress: bool = True) -> None:
        self.step, self.config = step, config
        self.train_loader, self.val_loader = train_loader, val_loader
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.show_progress = show_progress
        cpu = config.device == "cpu" or (config.device == "auto"
                                         and not torch.cuda.is_available())
        precision = config.precision
        if precision == "auto":  # bf16 autocast trains slower than fp32 on CPUs (DESIGN.md)
            precision = "fp32" if cpu else (
                "bf16" if torch.cuda.is_bf16_supported() else "fp16")
        self.precision = precision
        self.accelerator = Accelerator(
            cpu=cpu, mixed_precision="no" if precision == "fp32" else precision,
            gradient_accumulation_steps=config.grad_accum)
        self.device = self.accelerator.device
        self.model = model.to(self.device)
        self.stage_epochs = config.stage_epochs()
        self.stages = [s for s in STAGES if s in self.stage_epochs]

    @property
    def best_weights(self) -> Path:
        return self.ckpt_dir / "best.safetensors"

    def fit(self, resume: bool = False) -> StagedResult:
        state = _Progress()
        checkpoint = self._resume(state) if resume else None
        for index in range(state.stage_index, len(self.stages)):
            if index != state.stage_index:
                state.stage_index, state.stage_epoch, state.bad_epochs = index, 0, 0
            self._run_stage(self.stages[index], state,
                            checkpoint if index == state.stage_index else None)
            checkpoint = None
        history = [EpochRow(**row) for row in state.history]
        return StagedResult(history, state.best_epoch, state.best_metric, state.epoch,
                            state.stopped_early, self.best_weights)

    def _optimizer(self, stage: str) -> torch.optim.AdamW:
        encoder = {id(p) for p in self.step.encoder_parameters(self.model)}
        for param in self.model.parameters():
            param.requires_grad_(stage == "full" or id(param) not in encoder)
        groups: list[dict[str, Any]] = []
        for params, scale in (
                ([p for p in self.model.parameters() if id(p) not in encoder], 1.0),
                ([p for p in self.model.parameters() if id(p) in encoder and p.requires_grad],
                 self.config.encoder_lr_scale)):
            for subset, decay in (([p for p in params if p.ndim > 1], self.config.weight_decay),
                                  ([p for p in params if p.ndim <= 1], 0.0)):
                if subset:
                    groups.append({"params": subset, "lr": self.config.lr * scale,
                                   "weight_decay": decay})
        return torch.optim.AdamW(groups, lr=self.config.lr)

    def _set_train_mode(self) -> None:
        """Train mode, except batch norms whose parameters are frozen: a small batch must
        not overwrite the statistics learnt on the pretraining data."""
        self.model.train()
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                own = list(module.parameters(recurse=False))
                if own and not any(p.requires_grad for p in own):
                    module.eval()

    def _run_stage(self, stage: str, state: _Progress, checkpoint: dict[str, Any] | None
                   ) -> None:
        n_epochs = self.stage_epochs[stage]
        if state.stage_epoch >= n_epochs or stage in state.stopped_early:
            return
        optimizer = self._optimizer(stage)
        steps = math.ceil(len(self.train_loader(0)) / self.config.grad_accum)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
            n_epochs * steps, self.config.warmup, self.config.min_lr_ratio))
        if checkpoint is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
        model, optimizer = self.accelerator.prepare(self.model, optimizer)
        while state.stage_epoch < n_epochs:
            epoch_seed = self.config.seed * 100_003 + state.epoch
            seed_everything(epoch_seed)
            loader = self.accelerator.prepare(self.train_loader(epoch_seed))
            row = self._run_epoch(stage, model, optimizer, scheduler, loader, state.epoch + 1)
            state.epoch += 1
            state.stage_epoch += 1
            state.history.append(asdict(row))
            improved = row.metric > state.best_metric + (
                self.config.min_delta if state.best_epoch else 0.0)
            if improved:
                state.best_metric, state.best_epoch, state.bad_epochs = row.metric, row.epoch, 0
                with atomic_path(self.best_weights) as tmp:
                    save_weights(self.accelerator.unwrap_model(self.model), tmp)
            else:
                state.bad_epochs += 1
            self._log(row, improved)
            patience = self.config.patience
            if patience is not None and state.bad_epochs >= patience \
                    and state.stage_epoch < n_epochs:
                state.stopped_early.append(stage)
                stderr_console.print(f"[yellow]early stop[/]: stage '{stage}' did not improve "
                                     f"{self.step.metric_name} for {state.bad_epochs} epochs; "
                                     "moving on.")
            self._save(state, optimizer, scheduler)
            if stage in state.stopped_early:
                break

    def _run_epoch(self, stage: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: Any, loader: Any, epoch: int) -> EpochRow:
        total_epochs = sum(self.stage_epochs.values())
        description = f"epoch {epoch}/{total_epochs} {stage}"
        images, loss_sum, start = 0, 0.0, time.perf_counter()
        self._set_train_mode()
        with make_progress(self.show_progress and self.accelerator.is_main_process) as bar:
            task = bar.add_task(description, total=len(loader), stats="") if bar else None
            for batch in loader:
                with self.accelerator.accumulate(model), self.accelerator.autocast():
                    loss, n = self.step.training_loss(model, batch, self.device)
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients and self.config.clip_grad:
                        self.accelerator.clip_grad_norm_(
                            [p for p in model.parameters() if p.requires_grad],
                            self.config.clip_grad)
                    optimizer.step()
                    if self.accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                images += n
                loss_sum += float(loss.detach()) * n
                if bar is not None and task is not None:
                    rate = images / max(1e-9, time.perf_counter() - start)
                    bar.update(task, advance=1, stats=f"loss {loss_sum / max(images, 1):.3f} "
                               f"{rate:.1f} img/s")
            seconds = time.perf_counter() - start
            step = None
            if bar is not None and task is not None:
                bar.update(task, total=len(loader) + len(self.val_loader),
                           description=f"{description} + val")
                step = lambda: bar.advance(task)  # noqa: E731
            model.eval()
            with torch.no_grad():
                result = self.step.evaluate(model, self.val_loader, self.device, step)
        return EpochRow(epoch=epoch, stage=stage, lr=float(optimizer.param_groups[0]["lr"]),
                        train_loss=loss_sum / max(images, 1), val_loss=result.loss,
                        metric=float(result.metric), images_per_s=images / max(seconds, 1e-9),
                        seconds=seconds)

    def _save(self, state: _Progress, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        if not self.accelerator.is_main_process:
            return
        save_checkpoint({"progress": asdict(state),
                         "model": self.accelerator.unwrap_model(self.model).state_dict(),
                         "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(),
                         "stages": list(self.stages)}, self.ckpt_dir / LAST_CHECKPOINT)
        write_csv_atomic(self.run_dir / "metrics.csv", COLUMNS, ([
            f"{row[k]:.6g}" if isinstance(row.get(k), float) else
            ("" if row.get(k) is None else row.get(k)) for k in COLUMNS]
            for row in state.history))

    def _resume(self, state: _Progress) -> dict[str, Any] | None:
        checkpoint = last_checkpoint(self.ckpt_dir)
        if checkpoint is None:
            return None
        if checkpoint.get("stages") != list(self.stages):
            raise ConfigError(f"{self.ckpt_dir / LAST_CHECKPOINT} was written by a run with "
                              f"stages {checkpoint.get('stages')}, not {list(self.stages)}; "
                              "resume with the same epochs, or start a new run in another "
                              "folder.")
        self.model.load_state_dict(checkpoint["model"])
        going_on = restore_progress(state, checkpoint, self.stages, self.stage_epochs)
        return checkpoint if going_on else None

    def _log(self, row: EpochRow, improved: bool) -> None:
        if not self.accelerator.is_main_process:
            return
        mark = " [green]best[/]" if improved else ""
        val = f"val loss {row.val_loss:.3f} " if row.val_loss is not None else ""
        stderr_console.print(
            f"epoch {row.epoch} ({row.stage}): train loss {row.train_loss:.3f} | {val}"
            f"{self.step.metric_name} {row.metric:.3f} | {row.images_per_s:.1f} img/s{mark}")
