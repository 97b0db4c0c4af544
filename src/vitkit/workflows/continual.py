"""`vitkit train NEW_DATA --continue-from BUNDLE`: continual learning with rehearsal.

The continued model starts from the bundle's weights; new classes get new rows in its head
(the old rows kept). Each epoch trains on the new images plus a ``replay_ratio`` share of
draws from the exemplar memory the bundle keeps (``BUNDLE/memory/``, see
:mod:`vitkit.data.exemplars`), optionally with Learning without Forgetting
(:class:`~vitkit.classify.continual.LwFHook`). The continued bundle predicts old + new
classes and keeps a new, class-balanced memory of both.

What it reports (``continual.json`` in the run folder, the ``continual`` key of ``--json``,
the report): accuracy on the old classes' evaluation images before and after, on the new
classes, their average, backward transfer (after − before on the old classes) and
forgetting (the drop, 0 when none); beside the same figures for naive fine-tuning (no memory,
no distillation; ``compare_naive``) and, when asked, joint retraining from the pretrained
backbone on old + new data (``compare_joint``), with each run's training time.

Evaluation images of the old classes: ``old_eval``; else the old run's validation split
(``splits.csv`` beside the bundle) when its files are still there; else the old data's
validation split (``old_data``). Without any, the old-class figures are left out and the
report says why. The best epoch is chosen on the validation images of both (new val + old
eval), as a user holding them would; the figures are measured on the same images, so treat
them as validation, not test, figures.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, load_model
from torch.utils.data import ConcatDataset

from vitkit.backbones.factory import BackboneSpec, CreatedModel, create, rebuild
from vitkit.bundle import WEIGHTS_FILE, Bundle, BundleMeta, save_bundle, write_json_atomic
from vitkit.classify.config import ContinualConfig, TrainConfig
from vitkit.classify.continual import LwFHook, ReplayDataset, load_with_grown_head
from vitkit.classify.engine import Trainer, seed_everything
from vitkit.config import dump_config
from vitkit.console import stderr_console
from vitkit.data import (
    ImageDataset,
    Sample,
    ensure_validation_split,
    eval_transform,
    scan,
    train_transform,
    validate_samples,
)
from vitkit.data.exemplars import Exemplar, from_samples, read_memory, select_exemplars
from vitkit.data.transforms import bundle_preprocessing
from vitkit.errors import ConfigError, DataError
from vitkit.evaluate.classification import evaluate_samples
from vitkit.predictor.predict import load
from vitkit.report import write_report
from vitkit.report.continual import RECORD as CONTINUAL_RECORD
from vitkit.workflows.train import (
    CONFIG_FILE,
    TrainResult,
    finish_run,
    inherit_intensity,
    keep_memory,
    prepare_data,
    refuse_to_overwrite,
    removed_on_user_error,
)

DEFAULT_MEMORY = 1000  # the guide's buffer size


@dataclass
class ContinualResult(TrainResult):
    """`vitkit train --continue-from … --json`: the usual keys plus ``continual``."""

    continual: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Old:
    """The bundle being continued, read once."""

    bundle: Bundle
    labels: list[str]
    spec: BackboneSpec
    state: dict[str, Any]
    exemplars: list[Exemplar]


def run_continual_training(config: TrainConfig, resume: bool = False, progress: bool = True
                           ) -> ContinualResult:
    """Continues ``config.continual.continue_from`` on ``config.data`` (module docstring)."""
    started = time.perf_counter()
    assert config.continual is not None
    options = config.continual
    run_dir = Path(config.out)
    old = _read_old(options)
    config = inherit_intensity(config, old.bundle, "A continued model reads its images as its "
                               "weights were trained to")
    refuse_to_overwrite(run_dir, resume)
    new_folder = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, run_dir / CONFIG_FILE)
    with removed_on_user_error(run_dir, new_folder):
        samples, skipped = prepare_data(config, run_dir, progress)
        exemplars = old.exemplars or _exemplars_from_old_data(options, old, config)
        old_eval, old_eval_source = _old_eval(options, old, config)
    new_classes = sorted({s.label for s in samples} - set(old.labels))
    classes = old.labels + new_classes
    memory_samples = [Sample(e.path, e.label, "train") for e in exemplars]
    rendered = any(e.rendered for e in exemplars)  # already through the bundle's spec
    stderr_console.print(
        f"continuing {old.bundle.path} ({len(old.labels)} classes) with "
        f"{len(new_classes)} new: {', '.join(new_classes) or 'none'}; memory "
        f"{len(memory_samples)} exemplars, replay ratio {options.replay_ratio}"
        f"{', distilling the old logits' if options.distill_old else ''}")
    capacity = DEFAULT_MEMORY if config.memory is None else config.memory

    fit_started = time.perf_counter()
    trainer, created = _trainer(config, old, classes, samples, memory_samples, old_eval,
                                run_dir, progress, replay=True, distill=options.distill_old,
                                rendered_memory=rendered)
    fit = trainer.fit(resume=resume)
    if not trainer.accelerator.is_main_process:
        return ContinualResult("", fit.best_val_accuracy, fit.epochs_run, len(skipped),
                               str(run_dir), "", fit.best_epoch, 0, 0)
    fit_seconds = time.perf_counter() - fit_started
    everything = samples + memory_samples + [Sample(s.path, s.label, "val") for s in old_eval]
    result = finish_run(trainer, fit, created, config, everything, len(skipped), run_dir,
                        started, progress, result_type=ContinualResult, classes=classes,
                        extra_train={"continued_from": str(old.bundle.path),
                                     "old_classes": old.labels, "new_classes": new_classes})
    bundle_dir = Path(result.bundle)
    candidates = exemplars + from_samples([s for s in samples if s.split == "train"])
    memory = keep_memory(bundle_dir, candidates, classes, capacity, config, created)

    figures = {"ours": {**_measure(bundle_dir, old, old_eval, samples, new_classes, config,
                                   progress), "train_seconds": round(fit_seconds, 1)}}
    if options.compare_naive:
        figures["naive"] = _compare(config, old, classes, samples, old_eval, new_classes,
                                    run_dir / "naive", progress, resume)
    if options.compare_joint:
        figures["joint"] = _compare_joint(config, old, classes, samples, old_eval, new_classes,
                                          run_dir / "joint", progress, resume)
    summary = {
        "continued_from": str(old.bundle.path), "old_classes": old.labels,
        "new_classes": new_classes, "replay_ratio": options.replay_ratio,
        "distill_old": options.distill_old, "memory": memory,
        "old_eval": old_eval_source, "old_eval_images": len(old_eval),
        "figures": figures,
    }
    write_json_atomic(run_dir / CONTINUAL_RECORD, summary)
    result.continual = summary
    written = json.loads((run_dir / "summary.json").read_text())  # finish_run's, plus this
    write_json_atomic(run_dir / "summary.json", {**written, "continual": summary})
    write_report(run_dir)  # again: now with the continual-learning section
    return result


# ------------------------------------------------------------------------------- the old bundle

def _read_old(options: ContinualConfig) -> _Old:
    bundle = Bundle.open(options.continue_from)
    meta = bundle.meta
    if meta.task != "classify":
        raise ConfigError(f"{bundle.path} is a {meta.task} bundle; --continue-from takes a "
                          "classifier trained with `vitkit train`.")
    state = load_file(str(bundle.file(WEIGHTS_FILE, "weights")))
    record = (meta.model_extra or {}).get("memory")
    return _Old(bundle, list(meta.labels), BackboneSpec.from_dict(meta.backbone), state,
                read_memory(bundle.path, record))


def _exemplars_from_old_data(options: ContinualConfig, old: _Old, config: TrainConfig
                             ) -> list[Exemplar]:
    if not options.old_data:
        raise ConfigError(
            f"{old.bundle.path} keeps no exemplar memory, so there is nothing to rehearse the "
            "old classes with. Give their training images with --old-data DIR (a class-"
            "balanced memory is drawn from them), or train the first model with --memory N.")
    old_samples = _old_data_samples(options.old_data, old, config)
    capacity = DEFAULT_MEMORY if config.memory is None else config.memory
    return select_exemplars(from_samples([s for s in old_samples if s.split == "train"]),
                            old.labels, capacity, config.seed)


def _old_data_samples(source: str, old: _Old, config: TrainConfig) -> list[Sample]:
    scanned = scan(source)
    samples = ensure_validation_split(scanned, config.val_fraction, config.seed)
    report = validate_samples(samples, config.max_pixels, progress=False,
                              intensity=config.intensity)
    unknown = sorted({s.label for s in report.usable} - set(old.labels))
    if unknown:
        raise DataError(f"{source} holds classes the continued model never had "
                        f"({', '.join(unknown)}); --old-data is the old model's data. Put new "
                        "classes in NEW_DATA.")
    return report.usable


def _old_eval(options: ContinualConfig, old: _Old, config: TrainConfig
              ) -> tuple[list[Sample], str]:
    """The old classes' evaluation images and where they came from (module docstring)."""
    if options.old_eval:
        scanned = scan(options.old_eval)
        report = validate_samples(ensure_validation_split(scanned, 0.5, config.seed),
                                  config.max_pixels, progress=False,
                                  intensity=config.intensity)
        samples = [Sample(s.path, s.label, "val") for s in report.usable]
        _check_old_labels(samples, old, "--old-eval")
        return samples, f"--old-eval {options.old_eval}"
    splits = old.bundle.path.parent / "splits.csv"
    if splits.is_file():
        with splits.open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r.get("split") == "val"]
        paths = [Sample(Path(r["path"]), r["label"], "val") for r in rows]
        if paths and all(s.path.is_file() for s in paths):
            usable = validate_samples(paths, config.max_pixels, progress=False,
                                      intensity=config.intensity).usable
            kept = [s for s in usable if s.label in old.labels]
            return kept, f"the old run's validation split ({splits})"
    if options.old_data:
        samples = [s for s in _old_data_samples(options.old_data, old, config)
                   if s.split == "val"]
        return samples, f"the validation split of --old-data {options.old_data}"
    return [], "none (give --old-eval DIR to measure forgetting)"


def _check_old_labels(samples: list[Sample], old: _Old, option: str) -> None:
    unknown = sorted({s.label for s in samples} - set(old.labels))
    if unknown:
        raise DataError(f"{option} holds classes the old model does not know "
                        f"({', '.join(unknown)}); it should hold the old classes only.")


# ------------------------------------------------------------------------------- training

def _trainer(config: TrainConfig, old: _Old, classes: list[str], samples: list[Sample],
             memory: list[Sample], old_eval: list[Sample], run_dir: Path, progress: bool,
             replay: bool, distill: bool, rendered_memory: bool = False
             ) -> tuple[Trainer, CreatedModel]:
    """The engine on the continued model: new images (+ rehearsal), val = new val + old
    eval. ``rendered_memory``: the memory's files are already rendered through the spec."""
    seed_everything(config.seed)
    model = rebuild(old.spec, len(classes))
    load_with_grown_head(model, old.state)
    pre = bundle_preprocessing(old.bundle.meta.preprocessing, old.bundle.path)
    created = CreatedModel(model, old.spec, pre, new_head=False)
    class_to_idx = {c: i for i, c in enumerate(classes)}
    train_tf, eval_tf = train_transform(pre, config.augmentation), eval_transform(pre)
    train = [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val"] + old_eval
    spec = config.intensity
    memory_spec = None if rendered_memory else spec
    new_set = ImageDataset(train, class_to_idx, train_tf, config.max_pixels, spec)
    train_set: Any = new_set
    replayed = memory if replay else []
    if replayed and config.continual is not None:
        train_set = ReplayDataset(new_set, ImageDataset(replayed, class_to_idx, train_tf,
                                                        config.max_pixels, memory_spec),
                                  config.continual.replay_ratio)
    hook = None
    if distill:
        old_model = rebuild(old.spec, len(old.labels))
        old_model.model.load_state_dict(old.state)
        weight = config.continual.distill_weight if config.continual else 1.0
        hook = LwFHook(old_model, len(old.labels), weight, label_smoothing=config.label_smoothing)
    cached = (ImageDataset(train, class_to_idx, eval_tf, config.max_pixels, spec)
              if not replayed else ConcatDataset([
                  ImageDataset(train, class_to_idx, eval_tf, config.max_pixels, spec),
                  ImageDataset(replayed, class_to_idx, eval_tf, config.max_pixels, memory_spec)]))
    trainer = Trainer(
        model, config, train_set=train_set, train_eval_set=cached,
        val_set=ImageDataset(val, class_to_idx, eval_tf, config.max_pixels, spec),
        run_dir=run_dir, show_progress=progress, loss_hook=hook)
    return trainer, created


# ------------------------------------------------------------------------------- figures

def _measure(bundle_dir: Path, old: _Old, old_eval: list[Sample], samples: list[Sample],
             new_classes: list[str], config: TrainConfig, progress: bool) -> dict[str, Any]:
    """Accuracy on the old classes before and after, on the new classes, and what follows."""
    predictor = load(bundle_dir)
    new_val = [s for s in samples if s.split == "val" and s.label in new_classes]
    figures: dict[str, Any] = {"new_accuracy": _accuracy(predictor, new_val, config, progress)}
    if old_eval:
        before = _accuracy(load(old.bundle), old_eval, config, progress)
        after = _accuracy(predictor, old_eval, config, progress)
        assert before is not None and after is not None
        figures.update(old_accuracy_before=before, old_accuracy=after,
                       backward_transfer=round(after - before, 4),
                       forgetting=round(max(0.0, before - after), 4))
    tasks = [v for v in (figures.get("old_accuracy"), figures["new_accuracy"]) if v is not None]
    figures["average_accuracy"] = round(sum(tasks) / len(tasks), 4) if tasks else None
    return figures


def _accuracy(predictor: Any, samples: list[Sample], config: TrainConfig, progress: bool
              ) -> float | None:
    if not samples:
        return None
    evaluation = evaluate_samples(predictor, samples, config.batch_size, 0, progress=False)
    return round(float(evaluation.metrics.accuracy), 4)


def _quiet_bundle(trainer: Trainer, created: CreatedModel, classes: list[str], folder: Path
                  ) -> Path:
    """The comparison run's best weights as a bare bundle (no OOD fit, calibration or
    report: only its accuracy is wanted)."""
    model = trainer.accelerator.unwrap_model(trainer.model).cpu()
    load_model(model.model, str(folder / "checkpoints" / "best.safetensors"))
    meta = BundleMeta(backbone=created.spec.to_dict(), labels=classes,
                      preprocessing=created.preprocessing.model_dump(mode="json"))
    return save_bundle(folder / "bundle", model.model, meta)


def _compare(config: TrainConfig, old: _Old, classes: list[str], samples: list[Sample],
             old_eval: list[Sample], new_classes: list[str], folder: Path, progress: bool,
             resume: bool) -> dict[str, Any]:
    """Naive fine-tuning: the same run without memory or distillation."""
    stderr_console.print("[bold]comparison[/]: naive fine-tuning (no memory, no distillation)")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    trainer, created = _trainer(config, old, classes, samples, [], old_eval, folder, progress,
                                replay=False, distill=False)
    trainer.fit(resume=resume and (folder / "checkpoints" / "last.pt").is_file())
    seconds = time.perf_counter() - started
    bundle = _quiet_bundle(trainer, created, classes, folder)
    return {**_measure(bundle, old, old_eval, samples, new_classes, config, progress),
            "train_seconds": round(seconds, 1)}


def _compare_joint(config: TrainConfig, old: _Old, classes: list[str], samples: list[Sample],
                   old_eval: list[Sample], new_classes: list[str], folder: Path,
                   progress: bool, resume: bool) -> dict[str, Any]:
    """Joint retraining: the pretrained backbone on the old and the new training data."""
    assert config.continual is not None
    source = config.continual.old_data or (old.bundle.meta.train.get("config") or {}).get("data")
    if not source or not Path(source).exists():
        raise ConfigError("--compare-joint retrains on the old data too: give it with "
                          "--old-data DIR (the old run's data is not on disk any more).")
    stderr_console.print("[bold]comparison[/]: joint retraining on old + new data")
    old_train = [s for s in _old_data_samples(source, old, config) if s.split == "train"]
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seed_everything(config.seed)
    weights = (old.bundle.meta.train.get("config") or {}).get("weights", config.weights)
    created = create(old.spec.name, len(classes), weights=weights,
                     timm_kwargs=old.spec.extra.get("timm_kwargs"))
    created.zero_new_head()
    created.preprocessing = bundle_preprocessing(old.bundle.meta.preprocessing, old.bundle.path)
    pre = created.preprocessing
    class_to_idx = {c: i for i, c in enumerate(classes)}
    train = old_train + [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val"] + old_eval
    spec = config.intensity
    trainer = Trainer(
        created.model, config,
        train_set=ImageDataset(train, class_to_idx, train_transform(pre, config.augmentation),
                               config.max_pixels, spec),
        train_eval_set=ImageDataset(train, class_to_idx, eval_transform(pre), config.max_pixels,
                                    spec),
        val_set=ImageDataset(val, class_to_idx, eval_transform(pre), config.max_pixels, spec),
        run_dir=folder, show_progress=progress)
    trainer.fit(resume=resume and (folder / "checkpoints" / "last.pt").is_file())
    seconds = time.perf_counter() - started
    bundle = _quiet_bundle(trainer, created, classes, folder)
    return {**_measure(bundle, old, old_eval, samples, new_classes, config, progress),
            "train_seconds": round(seconds, 1), "old_train_images": len(old_train)}
