"""`vitkit segment train|eval|predict`: image/mask pairs → staged training → a segment bundle
→ Dice/IoU → masks and overlays.

Training follows `vitkit train`'s run folder: ``OUT/config.yaml`` (the resolved config, which
``--resume`` continues), ``OUT/skipped.csv``, ``OUT/splits.csv``, ``OUT/metrics.csv`` and
``OUT/checkpoints/`` (the staged loop's, :class:`~vitkit.tasks.trainer.StagedTrainer`), then
``OUT/bundle/`` (``task: "segment"``) measured as a user would load it, ``OUT/eval.json`` and
``OUT/summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from safetensors.torch import load_model
from torch.utils.data import DataLoader

from vitkit.atomic import atomic_path, write_csv_atomic
from vitkit.bundle import save_bundle, update_meta, write_json_atomic
from vitkit.classify.engine import seed_everything
from vitkit.config import dump_config
from vitkit.console import make_progress, stderr_console
from vitkit.data.images import DEFAULT_MAX_PIXELS, ImageProblem, load_rgb
from vitkit.data.joint import JointAugmentation
from vitkit.data.masks import (
    MaskPair,
    MvtecClasses,
    SegmentationDataset,
    check_pairs_usable,
    scan_segmentation,
    segmentation_transform,
    validate_pairs,
)
from vitkit.data.validate import write_skipped_csv
from vitkit.errors import DataError, ImageFailure
from vitkit.predictor.predict import expand_paths
from vitkit.segment.evaluate import evaluate_in_detail, evaluate_pairs, training_splits
from vitkit.segment.model import (
    DEFAULT_ARCH,
    DEFAULT_ENCODER,
    build_segmenter,
    bundle_meta,
    check_arch,
    check_encoder,
    check_input_size,
    encoder_normalisation,
)
from vitkit.segment.predict import SegmentPredictor, mask_image, overlay
from vitkit.tasks.segment import SegmentStep
from vitkit.tasks.trainer import StagedConfig, StagedTrainer
from vitkit.workflows.train import (
    CONFIG_FILE,
    refuse_to_overwrite,
    removed_on_user_error,
    resolve_resume_config,
)


class SegmentTrainConfig(StagedConfig):
    """`vitkit segment train`'s options (the staged loop's, plus data, model and size)."""

    data: str = ""
    out: str = "runs/segment"
    arch: str = Field(DEFAULT_ARCH, description="unet, unetplusplus, fpn or deeplabv3plus")
    encoder: str = Field(DEFAULT_ENCODER, description="tu-<timm name>")
    weights: str = Field("auto", description="auto, none or the encoder's weights file")
    size: int = Field(256, ge=32, description="training side in px, a multiple of 32")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of unsplit pairs for val")
    mvtec_classes: MvtecClasses = "single"
    augmentation: JointAugmentation = Field(default_factory=JointAugmentation)
    num_workers: int = Field(2, ge=0)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)


@dataclass
class SegmentTrainResult:
    """What `vitkit segment train --json` prints (keys are a contract for scripts)."""

    bundle: str
    run_dir: str
    dice: float | None
    iou: float | None
    per_class: dict[str, dict[str, Any]]
    classes: list[str]
    epochs_run: int
    best_epoch: int
    train_images: int
    val_images: int
    skipped: int
    stopped_early: list[str] = field(default_factory=list)
    test_dice: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_segment_training(config: SegmentTrainConfig, resume: bool = False,
                         progress: bool = True) -> SegmentTrainResult:
    """Trains a segmenter as configured and writes the run folder and the bundle.

    Raises:
        ConfigError: Bad options, or a run folder that holds another run (see
            :func:`~vitkit.workflows.train.refuse_to_overwrite`).
        DataError: No usable pairs, or nothing but background.
        WeightsError: The encoder's weights cannot be had.
    """
    started = time.perf_counter()
    run_dir = Path(config.out)
    check_arch(config.arch)  # seconds before the data is decoded, not minutes after
    check_encoder(config.encoder)
    check_input_size(config.size)
    refuse_to_overwrite(run_dir, resume)
    new_folder = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, run_dir / CONFIG_FILE)
    with removed_on_user_error(run_dir, new_folder):
        pairs, classes, n_skipped = _prepare_data(config, run_dir, progress)
    by_split = {name: [p for p in pairs if p.split == name] for name in ("train", "val", "test")}

    seed_everything(config.seed)
    model, record = build_segmenter(config.arch, config.encoder, len(classes), config.size,
                                    config.weights)
    mean, std = encoder_normalisation(model)
    stderr_console.print(f"model {config.arch} on {record.encoder} ({record.encoder_weights} "
                         f"weights), {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
                         f"params, {config.size} px")
    train_set = SegmentationDataset(by_split["train"], classes, segmentation_transform(
        config.size, True, config.augmentation, mean, std), config.max_pixels)
    val_set = SegmentationDataset(by_split["val"], classes, segmentation_transform(
        config.size, False, None, mean, std), config.max_pixels)
    # Decoder batch norms need 2+ images per batch: drop a last batch of one.
    drop_last = len(train_set) > config.batch_size and len(train_set) % config.batch_size == 1

    def train_loader(seed: int) -> DataLoader:
        return DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                          num_workers=config.num_workers, drop_last=drop_last,
                          generator=torch.Generator().manual_seed(seed))

    val_loader = DataLoader(val_set, batch_size=config.batch_size,
                            num_workers=config.num_workers)
    trainer = StagedTrainer(model, SegmentStep(classes, record.ignore_index), config,
                            train_loader, val_loader, run_dir, show_progress=progress)
    fit = trainer.fit(resume=resume)
    if not trainer.accelerator.is_main_process:
        return SegmentTrainResult("", str(run_dir), None, None, {}, classes, fit.epochs_run,
                                  fit.best_epoch, len(by_split["train"]), len(by_split["val"]),
                                  n_skipped)

    model = trainer.accelerator.unwrap_model(trainer.model).cpu()
    load_model(model, str(fit.best_weights))
    train_record: dict[str, Any] = {
        "config": config.model_dump(mode="json"),
        "data_fingerprint": pairs_fingerprint(pairs),
        "images": {k: len(v) for k, v in by_split.items()},
        "best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run,
        "precision": trainer.precision, "stopped_early": fit.stopped_early,
    }
    bundle_dir = save_bundle(run_dir / "bundle", model,
                             bundle_meta(record, classes, mean, std, train_record))

    # Measured on the saved bundle, at the images' own sizes, as a user loading it would.
    predictor = SegmentPredictor.load(bundle_dir)
    val = evaluate_pairs(predictor, by_split["val"], config.batch_size, progress,
                         "evaluating val")
    metrics: dict[str, Any] = {"val": {**val.to_dict(), "n_images": len(by_split["val"])}}
    if by_split["test"]:
        test = evaluate_pairs(predictor, by_split["test"], config.batch_size, progress,
                              "evaluating test")
        metrics["test"] = {**test.to_dict(), "n_images": len(by_split["test"])}
    update_meta(bundle_dir, train={**train_record, "metrics": metrics})
    write_json_atomic(run_dir / "eval.json", {**metrics["val"], "split": "val"})
    result = SegmentTrainResult(
        bundle=str(bundle_dir), run_dir=str(run_dir), dice=val.dice, iou=val.iou,
        per_class=val.per_class, classes=classes, epochs_run=fit.epochs_run,
        best_epoch=fit.best_epoch, train_images=len(by_split["train"]),
        val_images=len(by_split["val"]), skipped=n_skipped, stopped_early=fit.stopped_early,
        test_dice=metrics["test"]["dice"] if "test" in metrics else None,
        seconds=round(time.perf_counter() - started, 1))
    write_json_atomic(run_dir / "summary.json", {
        **result.to_dict(), "arch": config.arch, "encoder": record.encoder,
        "data": config.data, "precision": trainer.precision,
        "created": datetime.now(UTC).isoformat(timespec="seconds")})
    return result


def _prepare_data(config: SegmentTrainConfig, run_dir: Path, progress: bool
                  ) -> tuple[list[MaskPair], list[str], int]:
    """The usable pairs, each with a split (val carved out of train when the data has no
    val), the class names, and how many files were skipped (listed in ``skipped.csv``)."""
    if not config.data:
        raise DataError("no data given: pass the folder of images/ and masks/ (or an MVTec "
                        "folder) as DATA.")
    scanned = scan_segmentation(config.data, config.mvtec_classes)
    scanned.pairs, carved = training_splits(scanned.pairs, config.val_fraction, config.seed)
    if carved:
        stderr_console.print(f"{config.data} has no val split; held out "
                             f"{config.val_fraction:.0%} of train for validation")
    report = validate_pairs(scanned, config.max_pixels, progress=progress)
    write_skipped_csv(report.skipped, run_dir / "skipped.csv")
    style = "yellow" if report.skipped else "green"
    stderr_console.print(f"[{style}]{report.summary()}[/]"
                         + (f" — see {run_dir / 'skipped.csv'}" if report.skipped else ""))
    check_pairs_usable(report)
    for split in ("train", "val"):
        if not any(p.split == split for p in report.usable):
            raise DataError(f"no usable {split} pairs in {config.data} ({report.summary()}). "
                            "Give at least two usable image/mask pairs, or fix the skipped "
                            "ones.")
    _write_splits(report.usable, run_dir / "splits.csv")
    return report.usable, report.classes, len(report.skipped)


def _write_splits(pairs: Sequence[MaskPair], path: Path) -> None:
    write_csv_atomic(path, ("image", "mask", "split"),
                     ([str(p.image), str(p.mask or ""), p.split or ""] for p in pairs))


def pairs_fingerprint(pairs: Sequence[MaskPair]) -> str:
    """A short hash of which files (by name and size) went into each split."""
    digest = hashlib.sha256()
    for p in sorted(pairs, key=lambda p: str(p.image)):
        sizes = [f.stat().st_size if f is not None and f.exists() else -1
                 for f in (p.image, p.mask)]
        names = [p.image.name, p.mask.name if p.mask else None]
        digest.update(json.dumps([*names, p.split, *sizes]).encode())
    return digest.hexdigest()[:16]


def run_segment_eval(bundle: Path | str, data: str, split: str | None = None,
                     batch_size: int = 8, variant: str | None = None, device: str = "cpu",
                     progress: bool = True, out: Path | None = None, report: bool = True
                     ) -> dict[str, Any]:
    """The `vitkit segment eval --json` record (see
    :func:`~vitkit.segment.evaluate.evaluate_bundle`); with ``report``, also ``eval.json``
    and ``report.html`` (worst and best images by Dice) in ``out`` (default BUNDLE/eval)."""
    evaluation = evaluate_in_detail(bundle, data, split=split, batch_size=batch_size,
                                    variant=variant, device=device, progress=progress)
    if report:
        from vitkit.workflows.task_reports import write_segment_eval_report

        target = Path(out) if out is not None else Path(bundle) / "eval"
        details = {**evaluation.record, "bundle": str(evaluation.predictor.bundle.path),
                   "data": str(data)}
        write_json_atomic(target / "eval.json", details)
        write_segment_eval_report(target, evaluation, details)
    return evaluation.record


def run_segment_predict(bundle: Path | str, inputs: Sequence[str], out: Path,
                        batch_size: int = 8, variant: str | None = None, device: str = "cpu",
                        progress: bool = True) -> list[dict[str, Any]]:
    """Masks for images: writes ``OUT/<stem>_mask.png`` (palette PNG, the class index per
    pixel, the image's size) and ``OUT/<stem>_overlay.png`` per image.

    Returns:
        ``{"path", "error"}`` for each input that matched no file, then one record per image
        in order: ``{"path", "label", "classes": {name: share}, "size": [w, h], "mask",
        "overlay"}``, or ``{"path", "error"}`` for an image that could not be read.
    """
    predictor = SegmentPredictor.load(bundle, variant=variant, device=device)
    paths, failures = expand_paths(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = [f.to_dict() for f in failures]
    stems: dict[str, int] = {}
    n_classes = len(predictor.labels)
    with make_progress(progress) as bar:
        task = bar.add_task("predicting", total=len(paths), stats="") if bar else None
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            loaded: list[tuple[Path, Any]] = []
            for path in chunk:
                try:
                    loaded.append((path, load_rgb(path)[0]))
                except ImageProblem as problem:
                    records.append(ImageFailure(str(path), problem.reason).to_dict())
            found = predictor.predict([image for _, image in loaded],
                                      [path for path, _ in loaded]) if loaded else []
            for (path, image), prediction in zip(loaded, found, strict=True):
                stem = _unique_stem(path.stem, stems)
                mask_file, overlay_file = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
                with atomic_path(mask_file) as tmp:
                    mask_image(prediction.mask, n_classes).save(tmp, format="PNG")
                with atomic_path(overlay_file) as tmp:
                    overlay(image, prediction.mask, n_classes).save(tmp, format="PNG")
                records.append({**prediction.to_dict(), "mask": str(mask_file),
                                "overlay": str(overlay_file)})
            if bar is not None and task is not None:
                bar.update(task, advance=len(chunk))
    return records


def _unique_stem(stem: str, seen: dict[str, int]) -> str:
    """``stem``, or ``stem-2``, ``stem-3`` … for images of the same name in other folders."""
    seen[stem] = seen.get(stem, 0) + 1
    return stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"


def resolve_segment_resume(run_dir: Path, given: SegmentTrainConfig, changed: set[str]
                           ) -> SegmentTrainConfig:
    """The config a resumed run continues with: the saved one (options that contradict it
    are an error), as for `vitkit train` (:func:`~vitkit.workflows.train.resolve_resume_config`)."""
    # resolve_resume_config's type variable is bound to the classifier's config; it reads
    # only ``out`` and the fields of the given config's own class.
    resolved: SegmentTrainConfig = resolve_resume_config(run_dir, given,
                                                         changed)
    return resolved
