"""`vitkit train`: data → validation → staged fine-tuning → bundle → evaluation → report."""

from __future__ import annotations

import csv
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel
from safetensors.torch import load_model
from torch import nn

from vitkit.atomic import write_csv_atomic
from vitkit.backbones import CreatedModel, check_model_name, create
from vitkit.backbones.attention import attention_path
from vitkit.bundle import Bundle, BundleMeta, save_bundle, update_meta, write_json_atomic
from vitkit.classify.config import TrainConfig
from vitkit.classify.engine import FitResult, Trainer, seed_everything
from vitkit.classify.progressive import plan_progressive, resizable
from vitkit.config import dump_config
from vitkit.console import stderr_console
from vitkit.data import (
    ImageDataset,
    Preprocessing,
    Sample,
    check_usable,
    class_counts,
    ensure_validation_split,
    eval_transform,
    scan,
    train_transform,
    validate_samples,
    write_skipped_csv,
)
from vitkit.data.exemplars import Exemplar, from_samples, select_exemplars, write_memory
from vitkit.data.intensity import BUNDLE_KEY as INTENSITY_KEY
from vitkit.data.intensity import bundle_intensity, require_medical
from vitkit.data.layouts import data_fingerprint
from vitkit.errors import ConfigError, VitkitError
from vitkit.evaluate.classification import evaluate_samples
from vitkit.evaluate.curves import diagnose
from vitkit.predictor.predict import load
from vitkit.report import plot_confusion_matrix, plot_learning_curves, write_report
from vitkit.workflows.domain import (
    attach_dann,
    finish_adaptation,
    prepare_target,
    train_source_only,
)
from vitkit.workflows.scratch import finish_comparison, train_scratch
from vitkit.workflows.trust import TrustContext, after_training

CONFIG_FILE = "config.yaml"


@dataclass
class TrainResult:
    """What `vitkit train --json` prints (keys are a contract for users' scripts)."""

    bundle: str
    val_accuracy: float
    epochs_run: int
    skipped: int
    run_dir: str
    report: str
    best_epoch: int
    train_images: int
    val_images: int
    test_accuracy: float | None = None
    stopped_early: list[str] = field(default_factory=list)
    seconds: float = 0.0
    domain_adaptation: dict[str, Any] | None = None  # --domain-adapt: workflows/domain.py
    # convergence epoch, overfitting onset, best minus last (vitkit.evaluate.curves)
    learning_curve: dict[str, Any] = field(default_factory=dict)
    attention: str = ""  # sdpa | eager | mixed | none: the attention path that trained
    transfer: dict[str, Any] | None = None  # with --compare-scratch (workflows/scratch.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ConfigT = TypeVar("ConfigT", bound=TrainConfig)
# Any run's options (classifier, segmenter, detector): resuming needs only pydantic and ``out``.
RunConfigT = TypeVar("RunConfigT", bound=BaseModel)


def resolve_resume_config(run_dir: Path, given: RunConfigT, changed: set[str]) -> RunConfigT:
    """The config a resumed run must use: the saved one; conflicting options are an error."""
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        raise ConfigError(f"cannot resume: {saved_path} does not exist. Pass the --out folder "
                          "of the run to continue.")
    saved = type(given).model_validate(yaml.safe_load(saved_path.read_text()))
    conflicts = [k for k in changed - {"out"} if getattr(given, k) != getattr(saved, k)]
    if conflicts:
        raise ConfigError(
            f"cannot resume with different options ({', '.join(sorted(conflicts))}); a resumed "
            "run continues with the options it started with. Drop them, or start a new run "
            "with another --out."
        )
    # The run continues where its checkpoint was found, even if the folder was moved or the
    # run was started from another working directory with a relative --out.
    return saved.model_copy(update={"out": str(run_dir)})


def refuse_to_overwrite(run_dir: Path, resume: bool) -> None:
    """A new run never starts over a folder that holds one (its checkpoints would be lost);
    the message says whether that run finished or was interrupted, and what to do."""
    if resume or not (run_dir / "checkpoints" / "last.pt").exists():
        return
    summary = run_dir / "summary.json"
    if summary.is_file():
        raise ConfigError(f"{run_dir} already holds a finished training run (its bundle is "
                          f"{run_dir / 'bundle'}). Choose another --out, or delete the folder "
                          "to train again there.")
    done = max(0, len(_csv_rows(run_dir / "metrics.csv")))
    raise ConfigError(f"{run_dir} holds an interrupted training run ({done} epoch"
                      f"{'' if done == 1 else 's'} done, the last one checkpointed). Pass "
                      "--resume to continue it, or choose another --out (or delete the folder) "
                      "to start over.")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError:
        return []


def run_training(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Trains a classifier as configured and writes the run folder and the bundle."""
    started = time.perf_counter()
    run_dir = Path(config.out)
    check_model_name(config.model)  # seconds before the data is decoded, not minutes after
    if config.intensity is not None:
        require_medical()
    refuse_to_overwrite(run_dir, resume)
    new_folder = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, run_dir / CONFIG_FILE)

    with removed_on_user_error(run_dir, new_folder):
        samples, skipped = prepare_data(config, run_dir, progress)
    classes = sorted({s.label for s in samples})
    by_split = {name: [s for s in samples if s.split == name] for name in ("train", "val", "test")}
    stderr_console.print(_describe_counts(class_counts(samples)))
    scratch = (train_scratch(config, run_dir, resume, progress, run_training)
               if config.compare_scratch else None)
    with removed_on_user_error(run_dir, new_folder):
        target = prepare_target(config, classes, run_dir, progress)
    baseline = (train_source_only(config, run_dir, resume, progress, run_training)
                if target is not None and config.domain.compare_source_only else None)

    seed_everything(config.seed)
    created = create(config.model, num_classes=len(classes), weights=config.weights,
                     timm_kwargs=config.timm_kwargs)
    config = family_recipe(config, created)
    dump_config(config, run_dir / CONFIG_FILE)  # as resolved: what --resume will continue
    check_head_stage(created, config)
    created.zero_new_head()
    stderr_console.print(f"model {config.model} ({created.spec.weights} weights), "
                         f"{sum(p.numel() for p in created.model.parameters()) / 1e6:.1f}M params")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    created.preprocessing = input_preprocessing(created, config)
    pre = created.preprocessing
    evaluation_tf = eval_transform(pre)
    if config.progressive:
        created = resizable(created)
    progressive = plan_progressive(
        config.progressive, config.stage_epochs(), created.model, pre.input_size,
        lambda size: train_transform(pre.model_copy(update={"input_size": (size, size)}),
                                     config.augmentation))
    if progressive is not None:
        stderr_console.print(f"progressive resizing: {progressive.describe()}")
    trainer = Trainer(
        created.model, config,
        train_set=ImageDataset(by_split["train"], class_to_idx,
                               train_transform(pre, config.augmentation), config.max_pixels,
                               config.intensity),
        train_eval_set=ImageDataset(by_split["train"], class_to_idx, evaluation_tf,
                                    config.max_pixels, config.intensity),
        val_set=ImageDataset(by_split["val"], class_to_idx, evaluation_tf, config.max_pixels,
                             config.intensity),
        run_dir=run_dir, show_progress=progress, progressive=progressive,
    )
    hook = attach_dann(trainer, config, target, pre) if target is not None else None
    fit = trainer.fit(resume=resume)
    if not trainer.accelerator.is_main_process:
        return TrainResult("", fit.best_val_accuracy, fit.epochs_run, len(skipped), str(run_dir),
                           "", fit.best_epoch, len(by_split["train"]), len(by_split["val"]))

    result: TrainResult = finish_run(trainer, fit, created, config, samples, len(skipped),
                                     run_dir, started, progress)
    if scratch is not None:
        result = finish_comparison(result, scratch)
    if config.memory:  # the first memory, so a later run can continue without the old data
        train = from_samples(by_split["train"])
        keep_memory(Path(result.bundle), train, classes, config.memory, config, created)
    if hook is not None and target is not None:
        result = finish_adaptation(result, hook, target, baseline, config, by_split, progress)
    return result


def inherit_intensity(config: ConfigT, bundle: Bundle, why: str) -> ConfigT:
    """The config with ``bundle``'s intensity spec (CT windows, CLAHE): a run that builds on a
    bundle's view of the images (a teacher's logits, a continued model's weights) must read
    them the same way; a different spec given for the run is an error that says ``why``."""
    spec = bundle_intensity(bundle.meta, bundle.path)
    if config.intensity is None and spec is not None:
        require_medical()
        return config.model_copy(update={"intensity": spec})
    if config.intensity != spec:
        raise ConfigError(
            f"{bundle.path} reads images through "
            f"{spec.describe() if spec else 'no intensity window'}, but this run asks for "
            f"{config.intensity.describe() if config.intensity else 'none'}. {why}: leave "
            "--window and --clahe out (the bundle's are used).")
    return config


MEMORY_SIDE_MARGIN = 1.25  # exemplars keep this much more than the eval resize needs


def keep_memory(bundle_dir: Path, candidates: list[Exemplar], classes: list[str],
                capacity: int, config: TrainConfig, created: CreatedModel) -> dict[str, Any]:
    """A class-balanced exemplar memory of at most ``capacity`` images drawn from
    ``candidates``, written into the bundle (``memory/``) and recorded in ``vitkit.json``."""
    if capacity == 0:
        return {"images": 0}
    pre = created.preprocessing
    max_side = math.ceil(max(pre.input_size) / pre.crop_pct * MEMORY_SIDE_MARGIN)
    chosen = select_exemplars(candidates, classes, capacity, config.seed)
    record = write_memory(bundle_dir, chosen, max_side, config.seed, capacity, config.max_pixels,
                          config.intensity)
    update_meta(bundle_dir, memory=record)
    return record


# Full-stage learning rate and layer decay for transformers when the config leaves them to
# the default: the CNN values (1e-3, 0.8) made the offline ViT's loss jump; at these it
# fine-tuned to 0.908 on hymenoptera, above its own frozen probe (README, "Small-data recipe").
TRANSFORMER_FULL_STAGE = {"lr": 1e-4, "layer_decay": 0.75}


def family_recipe(config: ConfigT, created: CreatedModel) -> ConfigT:
    """The config with transformer learning rates where it left them to the (CNN) defaults."""
    full = config.stages.full
    unset = {k: v for k, v in TRANSFORMER_FULL_STAGE.items() if k not in full.model_fields_set}
    if not created.model.is_token_model or not unset:
        return config
    stages = config.stages.model_copy(update={"full": full.model_copy(update=unset)})
    return config.model_copy(update={"stages": stages})


def input_preprocessing(created: CreatedModel, config: TrainConfig) -> Preprocessing:
    """The backbone's preprocessing with the config's ``image_size`` and ``crop_pct``."""
    pre = created.preprocessing
    changes: dict[str, Any] = {}
    size = config.training_size()  # image_size, or where --progressive ends
    if size is not None and size != pre.input_size[0]:
        if created.model.has_fixed_input_size:
            raise ConfigError(f"{config.model} is a transformer with a fixed input size of "
                              f"{pre.input_size[0]} px; leave image_size out (and end "
                              f"--progressive at {pre.input_size[0]}).")
        changes["input_size"] = (size, size)
    if config.crop_pct is not None:
        changes["crop_pct"] = config.crop_pct
    return pre.model_copy(update=changes) if changes else pre


@contextmanager
def removed_on_user_error(run_dir: Path, created_here: bool) -> Iterator[None]:
    """Removes a run folder this run created when the data turns out unusable, so a failed
    attempt leaves nothing half-written behind (a run that trained keeps its checkpoints)."""
    try:
        yield
    except VitkitError:
        if created_here:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def check_head_stage(created: CreatedModel, config: TrainConfig) -> None:
    """A head-only stage trains one head on cached pooled features; a distilled DeiT has two
    (class and distillation token), each on its own token."""
    if isinstance(created.model.head, nn.ModuleList) and config.stage_epochs().get("head"):
        raise ConfigError(f"{config.model} has two heads (class and distillation token), which "
                          "a head-only stage cannot train: set stages.head.share to 0 in "
                          "--config (the top and full stages train both).")


ResultT = TypeVar("ResultT", bound=TrainResult)


def finish_run(trainer: Trainer, fit: FitResult, created: CreatedModel, config: TrainConfig,
               samples: list[Sample], n_skipped: int, run_dir: Path, started: float,
               progress: bool, extra_train: dict[str, Any] | None = None,
               result_type: type[ResultT] = TrainResult,  # type: ignore[assignment]
               classes: list[str] | None = None, **result_fields: Any) -> ResultT:
    """After training: the best weights into a bundle, the saved bundle measured on val (and
    test), eval/predictions/summary JSON, plots and the report. Shared by train, distill and
    continued training; ``extra_train`` adds keys to the bundle's ``train`` record,
    ``result_fields`` to the result (of ``result_type``); ``classes`` in the head's order
    (default: the samples' labels, sorted)."""
    classes = classes or sorted({s.label for s in samples})
    by_split = {name: [s for s in samples if s.split == name] for name in ("train", "val", "test")}
    model = trainer.accelerator.unwrap_model(trainer.model).cpu()
    load_model(model.model, str(run_dir / "checkpoints" / "best.safetensors"))
    curves = diagnose([asdict(r) for r in fit.history]).to_dict()
    attention = attention_path(model)
    meta = BundleMeta(
        backbone=created.spec.to_dict(),
        labels=classes,
        preprocessing=created.preprocessing.model_dump(mode="json"),
        train={
            "config": config.model_dump(mode="json"),
            "data_fingerprint": data_fingerprint(samples),
            "images": {k: len(v) for k, v in by_split.items()},
            "best_epoch": fit.best_epoch,
            "epochs_run": fit.epochs_run,
            "precision": trainer.precision,
            "attention": attention,
            "learning_curve": curves,
            **(extra_train or {}),
        },
        **({INTENSITY_KEY: config.intensity.model_dump(mode="json")}
           if config.intensity is not None else {}),
    )
    bundle_dir = save_bundle(run_dir / "bundle", model.model, meta)

    # Measure the saved bundle itself, as a user loading it would.
    predictor = load(bundle_dir)
    val_eval = evaluate_samples(predictor, by_split["val"], config.batch_size, config.num_workers,
                                progress, "evaluating val")
    metrics: dict[str, Any] = {"val": val_eval.metrics.to_dict()}
    test_accuracy = None
    if by_split["test"]:
        test_eval = evaluate_samples(predictor, by_split["test"], config.batch_size,
                                     config.num_workers, progress, "evaluating test")
        metrics["test"] = test_eval.metrics.to_dict()
        test_accuracy = test_eval.metrics.accuracy
    update_meta(bundle_dir, train={**meta.train, "metrics": metrics})

    write_json_atomic(run_dir / "eval.json", {**val_eval.metrics.to_dict(), "split": "val"})
    if "test" in metrics:
        write_json_atomic(run_dir / "test_eval.json", {**metrics["test"], "split": "test"})
    write_json_atomic(run_dir / "predictions.json", val_eval.sample_predictions(classes))
    plot_learning_curves([asdict(r) for r in fit.history], run_dir / "learning_curves.png")
    plot_confusion_matrix(val_eval.metrics.confusion_matrix, classes,
                          run_dir / "confusion_matrix.png")
    after_training(TrustContext(bundle_dir, run_dir, config, by_split, progress))
    result = result_type(
        bundle=str(bundle_dir), val_accuracy=val_eval.metrics.accuracy,
        epochs_run=fit.epochs_run, skipped=n_skipped, run_dir=str(run_dir),
        report=str(run_dir / "report.html"), best_epoch=fit.best_epoch,
        train_images=len(by_split["train"]), val_images=len(by_split["val"]),
        test_accuracy=test_accuracy, stopped_early=fit.stopped_early,
        seconds=round(time.perf_counter() - started, 1), learning_curve=curves,
        attention=attention, **result_fields,
    )
    write_json_atomic(run_dir / "summary.json", {
        **result.to_dict(), "model": config.model, "data": config.data, "classes": classes,
        "precision": trainer.precision,
        "grad_checkpointing": config.grad_checkpointing, "progressive": config.progressive,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    write_report(run_dir)
    return result


def prepare_data(config: TrainConfig, run_dir: Path, progress: bool):  # noqa: ANN202
    if not config.data:
        raise ConfigError("no data given: pass the image folder (or CSV manifest) as DATA.")
    scanned = scan(config.data)
    samples = ensure_validation_split(scanned, config.val_fraction, config.seed,
                                      config.test_fraction)
    if config.intensity is not None:
        stderr_console.print(f"reading images through {config.intensity.describe()}")
    report = validate_samples(samples, config.max_pixels, progress=progress,
                              intensity=config.intensity)
    write_skipped_csv(report.skipped, run_dir / "skipped.csv")
    style = "yellow" if report.skipped else "green"
    stderr_console.print(f"[{style}]{report.summary()}[/]"
                         + (f" — see {run_dir / 'skipped.csv'}" if report.skipped else ""))
    check_usable(report)
    _write_split_manifest(report.usable, run_dir / "splits.csv")
    return report.usable, report.skipped


def _write_split_manifest(samples: list[Sample], path: Path) -> None:
    """The split actually used, as a manifest `vitkit eval BUNDLE splits.csv` accepts."""
    write_csv_atomic(path, ["path", "label", "split"],
                     ([str(s.path), s.label, s.split] for s in samples))


def _describe_counts(counts: dict[str, dict[str, int]]) -> str:
    parts = [f"{split}: " + ", ".join(f"{c} {n}" for c, n in per.items())
             for split, per in counts.items()]
    return "images per split — " + "; ".join(parts)
