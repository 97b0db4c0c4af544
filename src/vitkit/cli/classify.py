"""`vitkit train`, `distill`, `eval`, `predict`, `report`, `demo`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from vitkit.atomic import write_csv_atomic
from vitkit.cli.common import (
    JsonOpt,
    QuietOpt,
    app,
    finish_items,
    fmt,
    path_width,
    plural,
    print_json,
    print_per_class,
    short_path,
)
from vitkit.console import make_progress, stderr_console
from vitkit.errors import ConfigError, ImageFailure, VitkitError

if TYPE_CHECKING:
    from vitkit.predictor.predict import Prediction  # noqa: F401


@app.command()
def train(
    ctx: typer.Context,
    data: Annotated[str, typer.Argument(help="Image folder (class-per-folder, or train/ val/ "
                                        "[test/] splits) or a CSV manifest path,label[,split]; "
                                        "an image,audio,label CSV trains an image + audio "
                                        "model (docs: guides/fusion).")],
    model: Annotated[str | None, typer.Option(
        help="timm name, hf:<org>/<model>, or a local Hugging Face folder. "
             "(default: efficientnet_lite2)")] = None,
    weights: Annotated[str | None, typer.Option(
        help="auto (offline registry, then hub), none (random init) or a "
             ".safetensors/state-dict file.")] = None,
    epochs: Annotated[int | None, typer.Option(
        min=1, help="Epochs over all stages together (split by the stage shares: 1 head "
             "epoch on cached features, then every layer). (default: 5)")] = None,
    out: Annotated[str | None, typer.Option(help="Run folder; the bundle goes to OUT/bundle. "
                                            "(default: runs/train)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with any training option; "
                                                "flags given here override it.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="(default: 16)")] = None,
    seed: Annotated[int | None, typer.Option(help="(default: 0)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda. (default: auto)")] = None,
    precision: Annotated[str | None, typer.Option(help="auto, fp32, bf16 or fp16 (auto: fp32 on "
                                                  "CPU, bf16/fp16 on CUDA).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last "
                                         "checkpoint.")] = False,
    ood: Annotated[bool | None, typer.Option(
        "--ood/--no-ood", help="Fit out-of-distribution statistics into the bundle at the end, "
                               "so predict answers 'unknown' for unfamiliar images. "
                               "(default: on)")] = None,
    calibrate: Annotated[bool | None, typer.Option(
        "--calibrate/--no-calibrate", help="Fit temperature scaling on the validation images "
                                           "into the bundle at the end. (default: on)")] = None,
    window: Annotated[list[str] | None, typer.Option(
        help="Intensity window LEVEL:WIDTH in the image's units (Hounsfield units for DICOM CT; "
             "16-bit PNG/TIFF kept at full depth), or a preset: brain, soft-tissue, lung, bone. "
             "Repeat for up to 3 windows, one per RGB channel. Reads DICOM files; recorded in "
             "the bundle, so eval, predict and serve read images the same way. Needs "
             "pip install 'vitkit[medical]'.",
        rich_help_panel="Medical and hard-contrast images")] = None,
    clahe: Annotated[str | None, typer.Option(
        help="CLAHE after windowing, CLIP:TILES (e.g. 2.0:8: clip limit 2, 8x8 tiles); "
             "recorded in the bundle.", rich_help_panel="Medical and hard-contrast images")
    ] = None,
    continue_from: Annotated[str | None, typer.Option(
        help="Continual learning: continue this classifier bundle on DATA (new classes extend "
             "its head; the old ones are rehearsed from the bundle's exemplar memory).",
        rich_help_panel="Continual learning")] = None,
    memory: Annotated[int | None, typer.Option(
        min=0, help="Exemplars (images) kept in the bundle for rehearsal, class-balanced. "
                    "(default: 1000 with --continue-from, else none)",
        rich_help_panel="Continual learning")] = None,
    replay_ratio: Annotated[float | None, typer.Option(
        help="Share of each epoch drawn from the memory. (default: 0.3)",
        rich_help_panel="Continual learning")] = None,
    distill_old: Annotated[bool | None, typer.Option(
        "--distill-old/--no-distill-old", help="Learning without Forgetting: keep the old "
                                               "classes' logits close to the old model's. "
                                               "(default: off)",
        rich_help_panel="Continual learning")] = None,
    old_data: Annotated[str | None, typer.Option(
        help="The old training data: the memory when the bundle keeps none, and the old half "
             "of --compare-joint.", rich_help_panel="Continual learning")] = None,
    old_eval: Annotated[str | None, typer.Option(
        help="Images of the old classes to measure forgetting on. (default: the old run's "
             "validation split when still on disk)",
        rich_help_panel="Continual learning")] = None,
    compare_naive: Annotated[bool | None, typer.Option(
        "--compare-naive/--no-compare-naive", help="Also fine-tune without memory or "
        "distillation and report it beside. (default: on)",
        rich_help_panel="Continual learning")] = None,
    compare_joint: Annotated[bool | None, typer.Option(
        "--compare-joint/--no-compare-joint", help="Also retrain from the pretrained backbone "
        "on old + new data and report it beside (needs the old data). (default: off)",
        rich_help_panel="Continual learning")] = None,
    target_domain: Annotated[str | None, typer.Option(
        help="Folder of unlabelled images from the domain the model will work in (searched "
             "recursively); with --domain-adapt dann the backbone learns features that do not "
             "tell them from DATA's.", rich_help_panel="Domain adaptation")] = None,
    domain_adapt: Annotated[str | None, typer.Option(
        help="dann: domain-adversarial training (a gradient-reversal layer and a domain "
             "classifier on the backbone's features) in the image stages. (default: none)",
        rich_help_panel="Domain adaptation")] = None,
    target_eval: Annotated[str | None, typer.Option(
        help="Labelled target-domain images (class folders named like DATA's), never trained "
             "on: reports the target accuracy.", rich_help_panel="Domain adaptation")] = None,
    compare_source_only: Annotated[bool | None, typer.Option(
        "--compare-source-only/--no-compare-source-only",
        help="Also train the same recipe without the domain loss (into OUT/source-only) and "
             "report both on the target images. (default: off)",
        rich_help_panel="Domain adaptation")] = None,
    progressive: Annotated[str | None, typer.Option(
        help="START:END, e.g. 128:224: the top and full stages train on START px images first "
             "and grow in steps of 16 px to END, the training size (validation and the bundle "
             "stay at END; ViT position embeddings are interpolated). (default: off)",
        rich_help_panel="Training extras")] = None,
    grad_checkpointing: Annotated[bool | None, typer.Option(
        "--grad-checkpointing/--no-grad-checkpointing",
        help="Recompute each block's activations in the backward pass instead of keeping them: "
             "less memory for one more forward per step (timm and Hugging Face models that "
             "support it). (default: off)", rich_help_panel="Training extras")] = None,
    compare_scratch: Annotated[bool | None, typer.Option(
        "--compare-scratch/--no-compare-scratch",
        help="Also train the same recipe from random weights (into OUT/scratch) and report the "
             "transfer gain (pretrained - scratch) / (1 - scratch). (default: off)",
        rich_help_panel="Training extras")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune a pretrained model on an image folder and write a bundle and a report.

    Stages: the head alone on cached backbone features, then the top blocks, then everything
    with layer-wise learning-rate decay. Every epoch is checkpointed; --resume continues a
    killed run. Bad images are skipped and listed in OUT/skipped.csv.
    """
    from vitkit.data.paired import is_paired_manifest

    if is_paired_manifest(data):
        from vitkit.cli.fusion import train_fusion

        return train_fusion(ctx)
    from vitkit.classify.config import TrainConfig
    from vitkit.config import load_config
    from vitkit.workflows.train import resolve_resume_config, run_training

    given: dict[str, Any] = {
        "data": data, "model": model, "weights": weights, "epochs": epochs, "out": out,
        "batch_size": batch_size, "seed": seed, "device": device, "precision": precision,
        "trust": {"ood": ood, "calibrate": calibrate}, "memory": memory,
        "intensity": {"windows": window or None, "clahe": clahe},
        "progressive": progressive, "grad_checkpointing": grad_checkpointing,
        "compare_scratch": compare_scratch}
    continual = {"replay_ratio": replay_ratio, "distill_old": distill_old, "old_data": old_data,
                 "old_eval": old_eval, "compare_naive": compare_naive,
                 "compare_joint": compare_joint}
    if continue_from is not None:
        given["continual"] = {"continue_from": continue_from, **continual}
    elif any(v is not None for v in continual.values()):
        raise ConfigError("--replay-ratio, --distill-old, --old-data, --old-eval and "
                          "--compare-naive/-joint belong to continual learning: add "
                          "--continue-from BUNDLE.")
    given["domain"] = {"method": domain_adapt, "target": target_domain,
                       "target_eval": target_eval, "compare_source_only": compare_source_only}
    cfg = load_config(TrainConfig, config, given)
    if resume:
        changed = {k for k, v in given.items()
                   if v is not None and not (isinstance(v, dict) and set(v.values()) == {None})}
        cfg = resolve_resume_config(Path(cfg.out), cfg, changed)
    if cfg.continual is not None:
        from vitkit.workflows.continual import run_continual_training

        continued = run_continual_training(cfg, resume=resume, progress=not quiet)
        if json_out:
            print_json(continued.to_dict())
        else:
            print_continual(continued)
        return
    result = run_training(cfg, resume=resume, progress=not quiet)
    if json_out:
        print_json(result.to_dict())
    else:
        stderr_console.print(
            f"[bold green]done[/]: val accuracy {result.val_accuracy:.3f} after "
            f"{plural(result.epochs_run, 'epoch')} (best epoch {result.best_epoch})\n"
            f"  bundle: {result.bundle}\n  report: {result.report}"
        )


def print_continual(result: Any) -> None:
    """The continued run's figures beside the comparisons, as a table on stderr."""
    summary = result.continual
    table = Table(title=f"continual learning: {len(summary['old_classes'])} old + "
                        f"{len(summary['new_classes'])} new classes "
                        f"(old classes measured on {summary['old_eval']})")
    for column in ("run", "old before", "old after", "new", "average", "forgetting",
                   "train s"):
        table.add_column(column, justify="left" if column == "run" else "right")
    names = {"ours": "rehearsal" + (" + LwF" if summary["distill_old"] else ""),
             "naive": "naive fine-tuning", "joint": "joint retraining"}
    for key, figures in summary["figures"].items():
        table.add_row(names.get(key, key), fmt(figures.get("old_accuracy_before")),
                      fmt(figures.get("old_accuracy")), fmt(figures.get("new_accuracy")),
                      fmt(figures.get("average_accuracy")), fmt(figures.get("forgetting")),
                      f"{figures.get('train_seconds', 0):.0f}")
    stderr_console.print(table)
    stderr_console.print(f"  bundle: {result.bundle} (memory: "
                         f"{summary['memory'].get('images', 0)} exemplars)\n"
                         f"  report: {result.report}", highlight=False)


@app.command()
def distill(
    teacher: Annotated[str, typer.Argument(help="Bundle folder of the teacher classifier.")],
    data: Annotated[str, typer.Argument(help="Image folder or CSV manifest, as for `train`; "
                                        "its classes must be the teacher's.")],
    student: Annotated[str | None, typer.Option(
        help="Student: timm name, hf:<org>/<model> or a local Hugging Face folder; a "
             "*_distilled_* DeiT for --mode token. (default: deit_tiny_patch16_224)")] = None,
    weights: Annotated[str | None, typer.Option(
        help="Student's initial weights: auto, none or a file. (default: auto)")] = None,
    mode: Annotated[str | None, typer.Option(
        help="soft (KL to the teacher's softened probabilities), hard (CE to the teacher's top "
             "class) or token (DeiT distillation token). (default: soft)")] = None,
    temperature: Annotated[float | None, typer.Option(help="Soft mode. (default: 4)")] = None,
    alpha: Annotated[float | None, typer.Option(
        help="Teacher's share of the loss; the labels get 1-alpha. (default: 0.5)")] = None,
    augment: Annotated[bool | None, typer.Option(
        "--augment/--no-augment", help="Random crops and flips; without them the teacher runs "
                                       "once per image and its logits are cached. "
                                       "(default: augment)")] = None,
    feature_weight: Annotated[float | None, typer.Option(
        help="Also match the teacher's embedding: adds this weight times 1 - cos(P s, t) "
             "between the student's pre-logits features (through a learned linear map P) and "
             "the teacher's. Gives the student far more than few-class logits; try 1. "
             "(default: 0, logits only)")] = None,
    teacher_variant: Annotated[str | None, typer.Option(
        help="The teacher's variant that computes its logits, e.g. openvino-int8 after `vitkit "
             "quantize TEACHER` (faster steps; see `vitkit bench TEACHER` for the list). "
             "(default: the bundle's default variant, chosen by `vitkit optimize`; torch-fp32 "
             "when none was chosen)")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="(default: 10)")] = None,
    out: Annotated[str | None, typer.Option(help="Run folder; the bundle goes to OUT/bundle. "
                                            "(default: runs/distill)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with any distill or training "
                                                "option; flags given here override it.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="(default: 32)")] = None,
    seed: Annotated[int | None, typer.Option(help="(default: 0)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda. (default: auto)")] = None,
    precision: Annotated[str | None, typer.Option(help="auto, fp32, bf16 or fp16.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last "
                                         "checkpoint.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a student on DATA from a teacher bundle's logits and the labels; write a bundle.

    The student is trained like `vitkit train` (same stages, checkpoints, run folder and
    bundle) with a distillation loss; a CNN teacher can teach a ViT student (DeiT's recipe).
    Every epoch is checkpointed; --resume continues a killed run.
    """
    from vitkit.classify.config import DistillConfig
    from vitkit.config import load_config
    from vitkit.workflows.distill import run_distill
    from vitkit.workflows.train import resolve_resume_config

    given = {"teacher": teacher, "data": data, "model": student, "weights": weights,
             "mode": mode, "temperature": temperature, "alpha": alpha, "augment": augment,
             "feature_weight": feature_weight, "teacher_variant": teacher_variant,
             "epochs": epochs, "out": out,
             "batch_size": batch_size, "seed": seed, "device": device, "precision": precision}
    cfg = load_config(DistillConfig, config, given)
    if resume:
        cfg = resolve_resume_config(Path(cfg.out), cfg,
                                    {k for k, v in given.items() if v is not None})
    result = run_distill(cfg, resume=resume, progress=not quiet)
    if json_out:
        print_json(result.to_dict())
    else:
        stderr_console.print(
            f"[bold green]done[/]: student val accuracy {result.val_accuracy:.3f} (teacher "
            f"{result.teacher['val_accuracy']:.3f}) after {plural(result.epochs_run, 'epoch')}\n"
            f"  bundle: {result.bundle}\n  report: {result.report}"
        )


@app.command(name="eval")
def eval_(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `vitkit train`.")],
    data: Annotated[str, typer.Argument(help="Labelled images: uses test/ if present, else "
                                        "val/, else every image.")],
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 32,
    variant: Annotated[str | None, typer.Option(
        help="Which variant runs the model (onnx-fp32, openvino-int8, …; see `vitkit bench`). "
             "(default: the bundle's default variant, chosen by `vitkit optimize`; torch-fp32 "
             "when none was chosen)")] = None,
    groups: Annotated[Path | None, typer.Option(
        help="CSV with a header path,group assigning images to groups: adds per-group accuracy, "
             "demographic parity and equalized-odds gaps (fairness).")] = None,
    group_column: Annotated[str, typer.Option(
        help="Column of --groups holding the group (e.g. site, camera). (default: group)")
    ] = "group",
    min_group_size: Annotated[int, typer.Option(
        min=1, help="Groups with fewer images are shown but not compared. (default: 10)")] = 10,
    out: Annotated[Path | None, typer.Option(
        help="Run folder to write fairness.json into, for `vitkit report`.")] = None,
    tta: Annotated[str, typer.Option(
        help="Test-time augmentation: none, flip (2 views) or flip-scale (4 views: also "
             "0.875x and 1.125x zooms); probabilities are averaged and the cost is reported. "
             "(default: none)")] = "none",
    modality: Annotated[str | None, typer.Option(
        help="Image + audio bundles: both (every input a row has), image or audio (that input "
             "alone). (default: both)")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Accuracy, balanced accuracy, per-class precision/recall/F1, confusion matrix, ECE."""
    from vitkit.cli.fusion import eval_fusion, is_fusion_bundle, refuse_for_other_bundles

    if is_fusion_bundle(bundle):
        return eval_fusion(ctx)
    refuse_for_other_bundles(modality=modality)
    from vitkit.data.groups import read_group_csv
    from vitkit.workflows.evaluate import run_eval
    from vitkit.workflows.fairness import print_fairness, write_fairness

    if groups is not None:
        read_group_csv(groups, group_column)  # a bad CSV fails before the slow evaluation
    result = run_eval(bundle, data, batch_size=batch_size, progress=not quiet, variant=variant,
                      groups=groups, group_column=group_column, min_group_size=min_group_size,
                      tta=tta)
    if out is not None and "fairness" in result:
        write_fairness(out, result["fairness"])
    if json_out:
        print_json(result)
        return
    print_per_class(f"{bundle} on {data} ({result['split']}, n={result['n']})",
                    result["per_class"])
    stderr_console.print(f"accuracy {result['accuracy']:.4f}  balanced accuracy "
                         f"{result['balanced_accuracy']:.4f}  ECE {result['ece']:.4f}"
                         f"  (temperature {result['temperature']:.3g})")
    if "tta" in result:
        cost = result["tta"]
        stderr_console.print(f"TTA {tta}: {cost['views']} views, "
                             f"{1000 * cost['seconds_per_image']:.1f} ms/image, "
                             f"{cost['slowdown']:.2f}x the plain model time")
    if "fairness" in result:
        print_fairness(result["fairness"])


@app.command()
def predict(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    paths: Annotated[list[str] | None, typer.Argument(
        help="Image files, folders (searched recursively) or globs such as 'imgs/*.jpg'; for "
             "an image + audio bundle, one image,audio CSV manifest.")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to list per image.")] = 3,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 32,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Also write a CSV file.")] = None,
    variant: Annotated[str | None, typer.Option(
        help="Which variant runs the model (onnx-fp32, openvino-int8, …; see `vitkit bench`). "
             "(default: the bundle's default variant, chosen by `vitkit optimize`; torch-fp32 "
             "when none was chosen)")] = None,
    tta: Annotated[str, typer.Option(
        help="Test-time augmentation: none, flip or flip-scale; scores are averaged over the "
             "views and the slowdown is printed on stderr. (default: none)")] = "none",
    no_ood: Annotated[bool, typer.Option(
        "--no-ood", help="Always name a class, even for images the bundle's OOD detector "
                         "finds unlike the training data (otherwise labelled 'unknown').")
    ] = False,
    image: Annotated[Path | None, typer.Option(
        help="Image + audio bundles: the example's image (alone, or with --audio).")] = None,
    audio: Annotated[Path | None, typer.Option(
        help="Image + audio bundles: the example's recording, a PCM WAV file.")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Classify images; unreadable files are reported, never fatal. Scores are probabilities,
    calibrated when the bundle holds a temperature (`vitkit calibrate`). With an OOD fit in
    the bundle (`vitkit ood fit`, done by `train`), images unlike the training data get the
    label "unknown" and every result an ood_score.

    Exit code 0 when at least one image was classified (failures are counted on stderr and
    listed as rows with an error); 2 when none could be (missing paths, empty folders,
    unreadable files)."""
    from vitkit.cli.fusion import is_fusion_bundle, predict_fusion, refuse_for_other_bundles

    if is_fusion_bundle(bundle):
        return predict_fusion(ctx)
    refuse_for_other_bundles(image=image, audio=audio)
    from vitkit.data.files import require_images
    from vitkit.predictor.predict import Prediction, expand_paths, load
    from vitkit.predictor.tta import TTA_VIEWS, TtaTiming

    files, missing = expand_paths(paths or [], dicom=True)
    require_images(files, [m.path for m in missing])  # before the model loads
    predictor = load(bundle, variant=variant, tta=tta, ood=not no_ood)
    if variant is None and predictor.variant.name != "torch-fp32" and not quiet:
        stderr_console.print(f"[dim]running {predictor.variant.name}, the bundle's default "
                             "variant (--variant to choose another)[/]", highlight=False)
    timing = TtaTiming(len(TTA_VIEWS[tta])) if tta != "none" else None
    results: list[Prediction | ImageFailure] = list(missing)
    with make_progress(not quiet and len(files) > batch_size) as bar:
        task = bar.add_task("predicting", total=len(files), stats="") if bar else None
        for result in predictor.predict_paths(files, top_k=top_k, batch_size=batch_size,
                                              timing=timing):
            results.append(result)
            if bar is not None and task is not None:
                bar.advance(task)
    if timing is not None and timing.images:
        stderr_console.print(f"TTA {tta}: {timing.views} views, {timing.slowdown:.2f}x the "
                             f"plain model time ({1000 * timing.seconds_per_image:.1f} vs "
                             f"{1000 * timing.plain_seconds_per_image:.1f} ms/image)")
    if csv_file is not None:
        write_csv_atomic(csv_file, ["path", "label", "score", "error"], (
            [r.path, r.label, f"{r.score:.6f}", ""] if isinstance(r, Prediction)
            else [r.path, "", "", r.error] for r in results))
    if json_out:
        print_json([r.to_dict() for r in results])
    else:
        stderr_console.print(prediction_table(results))
    failures = [(r.path, r.error) for r in results if isinstance(r, ImageFailure)]
    finish_items("classified", len(results) - len(failures), failures)


def prediction_table(results: Sequence[Prediction | ImageFailure]) -> Table:
    """One row per image; an "unknown" row says why instead of showing a class probability."""
    from vitkit.predictor.predict import Prediction

    table = Table()
    table.add_column("path", overflow="fold")
    table.add_column("label")
    table.add_column("score", justify="right")
    width = path_width(34)
    for r in results:
        if not isinstance(r, Prediction):
            table.add_row(short_path(r.path, width), f"[red]error[/]: {r.error}", "")
        elif r.ood:
            table.add_row(short_path(r.path, width), f"[yellow]{r.label}[/]",
                          f"unlike training (OOD {r.ood_score:.2f})")
        else:
            table.add_row(short_path(r.path, width), r.label, f"{r.score:.3f}")
    return table


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by `vitkit train`.")],
) -> None:
    """Write RUN_DIR/report.html: one self-contained page with metrics, curves, predictions."""
    from vitkit.report import write_report

    if not run_dir.is_dir():
        raise VitkitError(f"{run_dir} is not a folder; give the --out folder of a training run.")
    path = write_report(run_dir)
    stderr_console.print(f"report: {path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(
        help="Folder for the demo's runs: each run writes OUT/run-<time>, and OUT/latest "
             "points at the newest complete one (earlier runs are removed once it is "
             "complete). (default: demo-output)")] = Path("demo-output"),
    quick: Annotated[bool, typer.Option(
        "--quick", help="The same steps on a tenth of the images in about 20 seconds: checks "
                        "an installation; the figures mean little.")] = False,
    epochs: Annotated[int | None, typer.Option(
        min=2, help="Training epochs: one on the head alone, the rest on every layer. "
                    "(default: 3, --quick: 2)")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, the subsets and training. "
                                           "(default: 0)")] = 0,
    quiet: QuietOpt = False,
) -> None:
    """Train efficientnet_lite0 on the embedded textile images (nominal, local and global
    defects), measure it on a held-out test split, predict, then learn an anomaly detector from
    nominal images only; print each step's time and the commands to go on with."""
    import dataclasses

    from vitkit.workflows.demo import FULL, QUICK, run_demo

    plan = QUICK if quick else FULL
    if epochs is not None:
        plan = dataclasses.replace(plan, epochs=epochs)
    run_demo(out, plan, progress=not quiet, seed=seed)
