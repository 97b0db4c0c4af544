"""`vitkit train|eval|predict` on image + audio manifests: rows of ``image,audio,label`` →
the staged loop with modality dropout → a fusion bundle → accuracy with both inputs or one.

Training follows the other tasks' run folder: ``OUT/config.yaml`` (the resolved config,
which ``--resume`` continues), ``OUT/skipped.csv``, ``OUT/splits.csv``, ``OUT/metrics.csv``
and ``OUT/checkpoints/`` (:class:`~vitkit.tasks.trainer.StagedTrainer`), then
``OUT/bundle/`` (``task: "fusion"``) measured as a user would load it, ``OUT/eval.json``
and ``OUT/summary.json``.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from safetensors.torch import load_model
from torch.utils.data import DataLoader

from vitkit.atomic import write_csv_atomic
from vitkit.backbones.factory import check_model_name
from vitkit.bundle import save_bundle, update_meta, write_json_atomic
from vitkit.classify.engine import seed_everything
from vitkit.config import dump_config
from vitkit.console import stderr_console
from vitkit.data.audio import AudioProblem, load_wav, wav_rate
from vitkit.data.images import DEFAULT_MAX_PIXELS, ImageProblem, load_rgb
from vitkit.data.logmel import DEFAULT_N_MELS, LogMelSettings
from vitkit.data.paired import MODALITIES, PairedRow, read_paired_manifest, validate_paired
from vitkit.data.paired_inputs import (
    AudioAugmentation,
    ImageAugmentation,
    PairedBatch,
    PairedDataset,
    PairedInput,
    collate,
    image_train_transform,
)
from vitkit.data.transforms import eval_transform
from vitkit.data.validate import write_skipped_csv
from vitkit.errors import ConfigError, DataError
from vitkit.fusion.evaluate import check_modality, evaluate_rows, rows_for
from vitkit.fusion.model import build_fusion, bundle_meta
from vitkit.fusion.predict import FusionPredictor
from vitkit.tasks.fusion import FusionStep
from vitkit.tasks.trainer import StagedConfig, StagedTrainer
from vitkit.workflows.train import CONFIG_FILE, refuse_to_overwrite, removed_on_user_error

SPLITS = ("train", "val", "test")
DEFAULT_SAMPLE_RATE = 16_000  # the audio settings' rate when no training row has a recording


class FusionTrainConfig(StagedConfig):
    """`vitkit train MANIFEST.csv`'s options for an image + audio manifest (the staged
    loop's, plus the data, the image backbone, the log-mel settings and the audio encoder)."""

    data: str = ""
    out: str = "runs/fusion"
    model: str = Field("efficientnet_lite0", description="the image backbone: a timm name")
    weights: str = Field("auto", description="auto, none or the backbone's weights file")
    image_size: int | None = Field(None, ge=8, le=1024, description="images are squashed to "
                                   "this side; None: the backbone's own input size")
    n_mels: int = Field(DEFAULT_N_MELS, ge=8, le=256)
    sample_rate: int | None = Field(None, ge=1000, description="None: the training "
                                    "recordings' most common rate")
    window_ms: float = Field(25.0, gt=0)
    hop_ms: float = Field(10.0, gt=0)
    max_seconds: float = Field(2.0, gt=0, le=60, description="longer clips keep their start")
    audio_width: int = Field(128, ge=8)
    audio_layers: int = Field(2, ge=1, le=12)
    audio_heads: int = Field(4, ge=1)
    dim: int = Field(128, ge=8)
    modality_dropout: float = Field(0.25, ge=0, le=0.5, description="probability of hiding "
                                    "each input of a training example that has both")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="share of unsplit rows for val")
    audio_augmentation: AudioAugmentation = Field(default_factory=AudioAugmentation)
    image_augmentation: ImageAugmentation = Field(default_factory=ImageAugmentation)
    num_workers: int = Field(2, ge=0)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    # the staged loop's defaults, for an audio encoder that learns from scratch
    head_epochs: int = Field(2, ge=0, description="epochs on a frozen image backbone")
    full_epochs: int = Field(10, ge=0, description="epochs with every layer training")
    batch_size: int = Field(32, ge=1)


@dataclass
class FusionTrainResult:
    """What `vitkit train MANIFEST.csv --json` prints for an image + audio manifest."""

    bundle: str
    run_dir: str
    val_accuracy: float
    by_modality: dict[str, dict[str, float]]  # split -> {"both", "image", "audio"} accuracy
    labels: list[str]
    epochs_run: int
    best_epoch: int
    train_rows: int
    val_rows: int
    test_rows: int
    skipped: int
    test_accuracy: float | None = None
    stopped_early: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"task": "fusion", **asdict(self)}


def run_fusion_training(config: FusionTrainConfig, resume: bool = False,
                        progress: bool = True) -> FusionTrainResult:
    """Trains an image + audio model as configured; writes the run folder and the bundle.

    Raises:
        ConfigError: Bad options, or a run folder that holds another run.
        DataError: An unusable manifest, fewer than two classes, no usable val rows.
        WeightsError: The image backbone's weights cannot be had.
    """
    started = time.perf_counter()
    run_dir = Path(config.out)
    check_model_name(config.model)  # seconds before the data is read, not minutes after
    refuse_to_overwrite(run_dir, resume)
    new_folder = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    with removed_on_user_error(run_dir, new_folder):
        rows, n_skipped = _prepare_rows(config, run_dir, progress)
        settings = _audio_settings(config, [r for r in rows if r.split == "train"])
    if config.sample_rate is None:  # as resolved: what --resume continues with
        config = config.model_copy(update={"sample_rate": settings.sample_rate})
    dump_config(config, run_dir / CONFIG_FILE)
    labels = sorted({str(r.label) for r in rows}, key=_natural)
    by_split = {name: [r for r in rows if r.split == name] for name in SPLITS}

    seed_everything(config.seed)
    model, record, spec, preprocessing = build_fusion(
        config.model, config.weights, labels, settings, config.image_size,
        audio_width=config.audio_width, audio_layers=config.audio_layers,
        audio_heads=config.audio_heads, dim=config.dim,
        modality_dropout=config.modality_dropout)
    stderr_console.print(
        f"model: {config.model} ({spec.weights} weights) at {preprocessing.input_size[0]} px "
        f"+ audio encoder on {settings.n_mels} mel bands at {settings.sample_rate} Hz; "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params")
    train_set = PairedDataset(by_split["train"], labels,
                              image_train_transform(preprocessing, config.image_augmentation),
                              settings, config.audio_augmentation, config.max_pixels)
    val_set = PairedDataset(by_split["val"], labels, eval_transform(preprocessing), settings,
                            None, config.max_pixels)
    batch_of = partial(_collate, size=preprocessing.input_size, n_mels=settings.n_mels)

    def train_loader(seed: int) -> DataLoader:
        return DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                          num_workers=config.num_workers, collate_fn=batch_of,
                          generator=torch.Generator().manual_seed(seed))

    val_loader = DataLoader(val_set, batch_size=config.batch_size,
                            num_workers=config.num_workers, collate_fn=batch_of)
    step = FusionStep(config.modality_dropout, pretrained_image=spec.weights != "none")
    trainer = StagedTrainer(model, step, config, train_loader, val_loader, run_dir,
                            show_progress=progress)
    fit = trainer.fit(resume=resume)
    counts = {k: len(v) for k, v in by_split.items()}
    if not trainer.accelerator.is_main_process:
        return FusionTrainResult("", str(run_dir), 0.0, {}, labels, fit.epochs_run,
                                 fit.best_epoch, counts["train"], counts["val"],
                                 counts["test"], n_skipped)

    model = trainer.accelerator.unwrap_model(trainer.model).cpu()
    load_model(model, str(fit.best_weights))
    train_record: dict[str, Any] = {
        "config": config.model_dump(mode="json"), "rows": counts,
        "best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run,
        "precision": trainer.precision, "stopped_early": fit.stopped_early}
    bundle_dir = save_bundle(run_dir / "bundle", model,
                             bundle_meta(record, spec, labels, preprocessing, train_record))

    # Measured on the saved bundle, as a user loading it would.
    predictor = FusionPredictor.load(bundle_dir)
    by_modality: dict[str, dict[str, float]] = {}
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        if not by_split[split]:
            continue
        by_modality[split] = {}
        for modality in ("both", "image", "audio"):
            chosen, _ = rows_for(by_split[split], modality)
            if not chosen:
                continue
            measured = evaluate_rows(predictor, chosen, config.batch_size, progress,
                                     f"evaluating {split} ({modality})")
            by_modality[split][modality] = measured.accuracy
            if modality == "both":
                metrics[split] = {**measured.to_dict(), "split": split}
    update_meta(bundle_dir, train={**train_record, "metrics": metrics,
                                   "by_modality": by_modality})
    write_json_atomic(run_dir / "eval.json", metrics["val"])
    result = FusionTrainResult(
        bundle=str(bundle_dir), run_dir=str(run_dir), val_accuracy=by_modality["val"]["both"],
        by_modality=by_modality, labels=labels, epochs_run=fit.epochs_run,
        best_epoch=fit.best_epoch, train_rows=counts["train"], val_rows=counts["val"],
        test_rows=counts["test"], skipped=n_skipped,
        test_accuracy=by_modality.get("test", {}).get("both"),
        stopped_early=fit.stopped_early, seconds=round(time.perf_counter() - started, 1))
    write_json_atomic(run_dir / "summary.json", {
        **result.to_dict(), "model": config.model, "data": config.data,
        "created": datetime.now(UTC).isoformat(timespec="seconds")})
    return result


def _collate(items: Sequence[tuple[PairedInput, int]], size: tuple[int, int], n_mels: int
             ) -> PairedBatch:
    return collate([x for x, _ in items], size, n_mels, [y for _, y in items])


def _natural(label: str) -> tuple[int, int | str]:
    """Numbers in numeric order (2 before 10), then names."""
    return (0, int(label)) if label.isdigit() else (1, label)


def _prepare_rows(config: FusionTrainConfig, run_dir: Path, progress: bool
                  ) -> tuple[list[PairedRow], int]:
    """The usable rows, each with a split (val carved out of the unsplit rows when the
    manifest has no val rows), and how many were skipped (listed in ``skipped.csv``)."""
    if not config.data:
        raise DataError("no data given: pass an image,audio,label CSV manifest as DATA.")
    rows = _assign_splits(read_paired_manifest(Path(config.data)), config.val_fraction,
                          config.seed)
    report = validate_paired(rows, MODALITIES, config.max_pixels, config.max_seconds * 1.2)
    write_skipped_csv(report.skipped, run_dir / "skipped.csv")
    style = "yellow" if report.skipped else "green"
    stderr_console.print(f"[{style}]{report.summary()}[/]"
                         + (f" — see {run_dir / 'skipped.csv'}" if report.skipped else ""))
    usable = report.usable
    train_labels = {r.label for r in usable if r.split == "train"}
    if len(train_labels) < 2:
        raise DataError(f"{config.data}: an image + audio classifier needs usable training "
                        f"rows of at least two labels; found {len(train_labels)} "
                        f"({report.summary()}). Add rows, or fix the skipped files.")
    if not any(r.split == "val" for r in usable):
        raise DataError(f"{config.data}: no usable val rows ({report.summary()}). Mark some "
                        "rows val in the split column, or leave splits empty and give each "
                        "label at least two usable rows.")
    unseen = sorted({str(r.label) for r in usable if r.split != "train"} - train_labels,
                    key=_natural)
    if unseen:
        raise DataError(f"{config.data}: labels {', '.join(unseen)} have val or test rows but "
                        "no usable training row; the model could never predict them. Add "
                        "training rows of those labels.")
    write_csv_atomic(run_dir / "splits.csv", ("image", "audio", "label", "split"),
                     ([str(r.image or ""), str(r.audio or ""), r.label, r.split]
                      for r in usable))
    return usable, len(report.skipped)


def _assign_splits(rows: list[PairedRow], val_fraction: float, seed: int) -> list[PairedRow]:
    """Rows without a split go to train; when no row is val, ``val_fraction`` of each
    label's unsplit rows (at least one of two or more) go to val, chosen with ``seed``."""
    if any(r.split == "val" for r in rows):
        return [r if r.split else replace(r, split="train") for r in rows]
    by_label: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row.split is None:
            by_label.setdefault(str(row.label), []).append(i)
    val: set[int] = set()
    for label, indices in sorted(by_label.items()):
        if len(indices) < 2:
            continue
        random.Random(f"{seed}-{label}").shuffle(indices)
        val.update(indices[:max(1, round(val_fraction * len(indices)))])
    return [replace(r, split="val" if i in val else (r.split or "train"))
            for i, r in enumerate(rows)]


def _audio_settings(config: FusionTrainConfig, train_rows: Sequence[PairedRow]
                    ) -> LogMelSettings:
    rate = config.sample_rate
    if rate is None:
        rates = Counter(r for r in (wav_rate(row.audio) for row in train_rows
                                    if row.audio is not None) if r)
        if not rates:
            stderr_console.print(f"no training row has a recording: the model learns from "
                                 f"images alone (audio settings for {DEFAULT_SAMPLE_RATE} Hz)")
        rate = rates.most_common(1)[0][0] if rates else DEFAULT_SAMPLE_RATE
    try:
        return LogMelSettings.for_rate(rate, config.n_mels, config.window_ms, config.hop_ms,
                                       config.max_seconds)
    except ValueError as exc:
        raise ConfigError(f"log-mel settings that cannot work at {rate} Hz: {exc}. Lower "
                          "n_mels, or give sample_rate.") from exc


def select_split(rows: list[PairedRow]) -> tuple[str, list[PairedRow]]:
    """The test rows if there are any, else val, else every row."""
    for split in ("test", "val"):
        chosen = [r for r in rows if r.split == split]
        if chosen:
            return split, chosen
    return "all", rows


def run_fusion_eval(bundle: Path | str, data: str, modality: str = "both",
                    batch_size: int = 32, progress: bool = True) -> dict[str, Any]:
    """The `vitkit eval BUNDLE MANIFEST.csv --json` record of an image + audio bundle:
    accuracy, balanced accuracy, per-class precision/recall/F1, confusion matrix, ECE, NLL,
    ``n`` (rows measured), ``modality``, ``split`` (test, else val, else all),
    ``n_without_input`` (rows left out: no input of that modality) and the skipped files.

    Raises:
        DataError: A bad manifest, no usable row, a label the bundle does not know.
    """
    check_modality(modality)
    predictor = FusionPredictor.load(bundle)
    split, rows = select_split(read_paired_manifest(Path(data)))
    chosen, without = rows_for(rows, modality)
    if not chosen:
        raise DataError(f"{data}: no {split} row has an {modality}; --modality {modality} "
                        "measures the rows that have one.")
    needed = MODALITIES if modality == "both" else (modality,)
    report = validate_paired(chosen, needed, max_seconds=predictor.settings.max_seconds * 1.2)
    if report.skipped:
        stderr_console.print(f"[yellow]{report.summary()}[/]")
    if not report.usable:
        raise DataError(f"no usable rows to evaluate in {data} ({report.summary()}).")
    metrics = evaluate_rows(predictor, report.usable, batch_size, progress,
                            f"evaluating ({modality})")
    return {**metrics.to_dict(), "modality": modality, "split": split,
            "variant": predictor.variant_name, "n_without_input": without,
            "n_skipped": len(report.skipped),
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in report.skipped]}


def run_fusion_predict(bundle: Path | str, rows: Sequence[PairedRow], top_k: int = 3,
                       batch_size: int = 32) -> list[dict[str, Any]]:
    """One record per row, in order: ``{"image", "audio", "label", "score", "topk",
    "modality"}``, or ``{"image", "audio", "error"}`` for a row whose file cannot be read."""
    predictor = FusionPredictor.load(bundle)
    records: list[dict[str, Any]] = []
    for start in range(0, len(rows), batch_size):
        loaded: list[tuple[int, PairedInput]] = []
        chunk = rows[start:start + batch_size]
        chunk_records: list[dict[str, Any]] = []
        for row in chunk:
            names = {"image": None if row.image is None else str(row.image),
                     "audio": None if row.audio is None else str(row.audio)}
            try:
                image = None if row.image is None else load_rgb(row.image)[0]
                waveform = None if row.audio is None else load_wav(
                    row.audio, predictor.settings.max_seconds)
            except (ImageProblem, AudioProblem) as problem:
                chunk_records.append({**names, "error": problem.reason})
                continue
            loaded.append((len(chunk_records), predictor.prepare(image, waveform)))
            chunk_records.append(names)
        answers = predictor.predict([x for _, x in loaded], top_k)
        for (index, _), answer in zip(loaded, answers, strict=True):
            chunk_records[index] = {**chunk_records[index], **answer.to_dict()}
        records.extend(chunk_records)
    return records
