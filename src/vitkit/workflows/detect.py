"""`vitkit detect train`: boxes (COCO, YOLO, MVTec masks) → checks → staged training →
a detection bundle → its mAP on the validation (and test) images.

The run folder holds ``config.yaml`` (what ``--resume`` continues), ``skipped.csv`` and
``dropped_boxes.csv`` (what the checks left out), ``splits.csv``, ``metrics.csv`` and
``checkpoints/`` (the staged loop's), ``eval.json`` (with per-class PR curves),
``summary.json`` and ``bundle/``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import AliasChoices, Field, field_validator
from safetensors.torch import load_model
from torch.utils.data import DataLoader

from vitkit.atomic import write_csv_atomic
from vitkit.backbones.factory import check_model_name
from vitkit.bundle import BundleMeta, save_bundle, update_meta, write_json_atomic
from vitkit.config import dump_config
from vitkit.console import stderr_console
from vitkit.data.boxes import (
    DETECTION_AUGMENTATION,
    DetectionDataset,
    DetectionSample,
    assign_sample_splits,
    check_detection_usable,
    collate_detection,
    detection_transform,
    scan_detection,
    validate_detection,
    write_dropped_csv,
)
from vitkit.data.images import DEFAULT_MAX_PIXELS
from vitkit.data.joint import JointAugmentation
from vitkit.data.transforms import Preprocessing
from vitkit.data.validate import write_skipped_csv
from vitkit.detect.evaluate import evaluate_detector
from vitkit.detect.model import (
    DEFAULT_ARCH,
    DEFAULT_BACKBONE,
    FPN_CHANNELS,
    Arch,
    DetectRecord,
    build_detector,
    check_size,
)
from vitkit.detect.predict import load_detector
from vitkit.errors import ConfigError, DataError
from vitkit.tasks.detect import DetectStep
from vitkit.tasks.trainer import StagedConfig, StagedTrainer
from vitkit.workflows.train import (
    CONFIG_FILE,
    refuse_to_overwrite,
    removed_on_user_error,
    resolve_resume_config,
)


class DetectTrainConfig(StagedConfig):
    """`vitkit detect train` options (YAML via ``--config``; flags on top). The staged loop's
    options (epochs, rates, batch, device, seed) are :class:`StagedConfig`'s."""

    data: str = Field("", description="COCO .json, YOLO folder (data.yaml) or MVTec folder")
    out: str = Field("runs/detect", description="the run folder")
    arch: Arch = DEFAULT_ARCH
    backbone: str = DEFAULT_BACKBONE
    weights: str = Field("auto", description="auto (offline registry, else hub), none, or a "
                         "state dict file for the backbone")
    size: int = Field(320, description="square input side in px, a multiple of 32")
    fpn_channels: int = Field(FPN_CHANNELS, ge=8, le=1024)
    score_threshold: float = Field(0.3, ge=0, le=1, description="predict's default cut-off")
    val_fraction: float = Field(0.2, ge=0, lt=1)
    test_fraction: float = Field(0.0, ge=0, lt=1)
    mvtec_classes: Literal["single", "per_defect"] = "single"
    augmentation: JointAugmentation = Field(
        default_factory=lambda: DETECTION_AUGMENTATION,
        validation_alias=AliasChoices("augmentation", "augment"))  # augment: before 2026-12-08
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    num_workers: int = Field(0, ge=0)

    @field_validator("size")
    @classmethod
    def _multiple_of_32(cls, size: int) -> int:
        check_size(size)
        return size


@dataclass
class DetectTrainResult:
    """What `vitkit detect train --json` prints (keys are a contract for users' scripts)."""

    bundle: str
    map_50: float
    map_50_95: float
    per_class: dict[str, dict[str, float | None]]
    epochs_run: int
    best_epoch: int
    train_images: int
    val_images: int
    skipped: int
    dropped_boxes: int
    run_dir: str
    test_map_50: float | None = None
    stopped_early: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_detect_train(config: DetectTrainConfig, resume: bool = False, progress: bool = True,
                     changed: set[str] | None = None) -> DetectTrainResult:
    """Trains a detector as configured; writes the run folder and its bundle."""
    started = time.perf_counter()
    if not config.out:
        raise ConfigError("give the run folder with --out DIR (the bundle goes to DIR/bundle).")
    run_dir = Path(config.out)
    if resume:
        config = resolve_resume_config(run_dir, config, changed or set())
    check_model_name(config.backbone)  # before the images are decoded
    refuse_to_overwrite(run_dir, resume)
    new_folder = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, run_dir / CONFIG_FILE)
    with removed_on_user_error(run_dir, new_folder):
        samples, classes, n_skipped, n_dropped = _prepare_data(config, run_dir, progress)
    by_split = {name: [s for s in samples if s.split == name] for name in ("train", "val", "test")}
    record = DetectRecord(arch=config.arch, backbone=config.backbone, classes=classes,
                          min_size=config.size, max_size=config.size,
                          score_threshold=config.score_threshold,
                          fpn_channels=config.fpn_channels)
    torch.manual_seed(config.seed)
    model, source = build_detector(record, config.weights)
    stderr_console.print(f"{config.arch} on {config.backbone} ({source} weights), "
                         f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
                         f"{config.size} px; {len(classes)} classes: {', '.join(classes)}")
    offset = record.label_offset
    train_set = DetectionDataset(by_split["train"], detection_transform(
        config.size, train=True, augment=config.augmentation), config.max_pixels, offset)
    val_set = DetectionDataset(by_split["val"], detection_transform(config.size, train=False),
                               config.max_pixels, offset)

    def train_loader(seed: int) -> DataLoader:
        return DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                          num_workers=config.num_workers, collate_fn=collate_detection,
                          generator=torch.Generator().manual_seed(seed))

    val_loader = DataLoader(val_set, batch_size=config.batch_size, collate_fn=collate_detection,
                            num_workers=config.num_workers)
    staged = StagedConfig.model_validate(
        {k: getattr(config, k) for k in StagedConfig.model_fields})
    trainer = StagedTrainer(model, DetectStep(classes, offset), staged, train_loader,
                            val_loader, run_dir, show_progress=progress)
    fit = trainer.fit(resume=resume)
    if not trainer.accelerator.is_main_process:  # the other processes of a multi-GPU run
        return DetectTrainResult("", fit.best_metric, 0.0, {}, fit.epochs_run, fit.best_epoch,
                                 len(by_split["train"]), len(by_split["val"]), n_skipped,
                                 n_dropped, str(run_dir))

    model = trainer.accelerator.unwrap_model(trainer.model).cpu()
    load_model(model, str(fit.best_weights))
    size = (config.size, config.size)
    mean = tuple(float(v) for v in model.transform.image_mean)
    std = tuple(float(v) for v in model.transform.image_std)
    preprocessing = Preprocessing(input_size=size, interpolation="bilinear", mean=mean, std=std,
                                  crop_pct=1.0, crop_mode="squash")
    meta = BundleMeta(
        task="detect",
        backbone={"name": config.backbone, "source": "timm", "weights": source},
        labels=classes,
        preprocessing=preprocessing.model_dump(mode="json"),
        train={"config": config.model_dump(mode="json"),
               "data_fingerprint": _fingerprint(samples),
               "images": {k: len(v) for k, v in by_split.items()},
               "best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run,
               "precision": trainer.precision},
        detect=record.model_dump(mode="json"),
    )
    bundle_dir = save_bundle(run_dir / "bundle", model, meta)

    # Measure the saved bundle, as a user loading it would.
    detector = load_detector(bundle_dir, device=config.device)
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        if not by_split[split]:
            continue
        scores = evaluate_detector(detector, by_split[split], config.batch_size,
                                   config.max_pixels, progress, f"evaluating {split}")
        record_ = {**scores.to_dict(), "split": split, "bundle": str(bundle_dir)}
        write_json_atomic(run_dir / ("eval.json" if split == "val" else "test_eval.json"),
                          record_)
        metrics[split] = {k: v for k, v in record_.items() if k not in ("pr_curves", "bundle")}
    update_meta(bundle_dir, train={**meta.train, "metrics": metrics})
    val = metrics.get("val") or {}
    result = DetectTrainResult(
        bundle=str(bundle_dir), map_50=float(val.get("map_50", 0.0)),
        map_50_95=float(val.get("map_50_95", 0.0)), per_class=val.get("per_class", {}),
        epochs_run=fit.epochs_run, best_epoch=fit.best_epoch,
        train_images=len(by_split["train"]), val_images=len(by_split["val"]),
        skipped=n_skipped, dropped_boxes=n_dropped, run_dir=str(run_dir),
        test_map_50=metrics["test"]["map_50"] if "test" in metrics else None,
        stopped_early=fit.stopped_early, seconds=round(time.perf_counter() - started, 1))
    write_json_atomic(run_dir / "summary.json", {
        **result.to_dict(), "task": "detect", "arch": config.arch, "backbone": config.backbone,
        "data": config.data, "classes": classes, "precision": trainer.precision,
        "created": datetime.now(UTC).isoformat(timespec="seconds")})
    return result


def _prepare_data(config: DetectTrainConfig, run_dir: Path, progress: bool
                  ) -> tuple[list[DetectionSample], list[str], int, int]:
    """The checked samples with their splits, the classes, and how many images were skipped
    and boxes dropped (both written to CSV files in the run folder)."""
    if not config.data:
        raise DataError("no data given: pass a COCO .json file, a YOLO folder (with "
                        "data.yaml) or an MVTec folder as DATA.")
    scanned = scan_detection(config.data, config.mvtec_classes)
    report = validate_detection(scanned, config.max_pixels, progress=progress)
    write_skipped_csv(report.skipped, run_dir / "skipped.csv")
    write_dropped_csv(report.dropped, run_dir / "dropped_boxes.csv")
    problems = report.skipped or report.dropped
    stderr_console.print(f"[{'yellow' if problems else 'green'}]{report.summary()}[/]"
                         + (f" — see {run_dir / 'skipped.csv'} and "
                            f"{run_dir / 'dropped_boxes.csv'}" if problems else ""),
                         highlight=False)
    for line in report.dropped_per_file()[:3]:
        stderr_console.print(f"  {line}", highlight=False)
    check_detection_usable(report)
    samples = assign_sample_splits(report.usable, config.val_fraction, config.seed,
                                   config.test_fraction)
    if not any(s.split == "val" for s in samples) and config.val_fraction > 0:
        # Only a train split was given (e.g. YOLO images/train/): hold out part of it.
        loose = [replace(s, split=None) if s.split == "train" else s for s in samples]
        samples = assign_sample_splits(loose, config.val_fraction, config.seed, 0.0)
    counts = {name: sum(1 for s in samples if s.split == name) for name in ("train", "val",
                                                                            "test")}
    if not counts["train"] or not counts["val"]:
        raise DataError(f"{config.data} gives {counts['train']} training and {counts['val']} "
                        "validation images; a detector needs both. Add images, or raise "
                        "--val-fraction (in --config) above 0.")
    write_csv_atomic(run_dir / "splits.csv", ["path", "split", "boxes"],
                     ([str(s.image), s.split or "", len(s.boxes)] for s in samples))
    stderr_console.print("images per split — " + ", ".join(f"{k}: {v}" for k, v in counts.items()
                                                         if v))
    return samples, list(report.classes), len(report.skipped), len(report.dropped)


def _fingerprint(samples: list[DetectionSample]) -> str:
    """A short hash of which files (name, size, boxes) went into each split."""
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: str(s.image)):
        size = s.image.stat().st_size if s.image.exists() else -1
        digest.update(json.dumps([s.image.name, s.split, size, s.boxes, s.labels]).encode())
    return digest.hexdigest()[:16]
