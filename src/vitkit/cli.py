"""The `vitkit` command: each verb is a thin call into the library.

Conventions: `--json` prints one JSON document on stdout; people get tables and progress bars on
stderr. Exit codes: 0 ok, 2 user error (a one-paragraph message, no traceback), 1 internal error.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vitkit.console import stderr_console
from vitkit.errors import VitkitError

app = typer.Typer(
    name="vitkit",
    help="From a folder of images to a light, fast and trustworthy vision model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.command()
def train(
    data: Annotated[str, typer.Argument(help="Image folder (class-per-folder, or train/ val/ "
                                        "[test/] splits) or a CSV manifest path,label[,split].")],
    model: Annotated[str | None, typer.Option(
        help="timm name, hf:<org>/<model>, or a local Hugging Face folder. "
             "(default: efficientnet_lite0)")] = None,
    weights: Annotated[str | None, typer.Option(
        help="auto (offline registry, then hub), none (random init) or a "
             ".safetensors/state-dict file.")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Epochs over all stages together (split by the stage shares). "
             "(default: 10)")] = None,
    out: Annotated[str | None, typer.Option(help="Run folder; the bundle goes to OUT/bundle. "
                                            "(default: runs/train)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with any training option; "
                                                "flags given here override it.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="(default: 32)")] = None,
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
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune a pretrained model on an image folder and write a bundle and a report.

    Stages: the head alone on cached backbone features, then the top blocks, then everything
    with layer-wise learning-rate decay. Every epoch is checkpointed; --resume continues a
    killed run. Bad images are skipped and listed in OUT/skipped.csv.
    """
    from vitkit.classify.config import TrainConfig
    from vitkit.config import load_config
    from vitkit.workflows.train import resolve_resume_config, run_training

    given = {"data": data, "model": model, "weights": weights, "epochs": epochs, "out": out,
             "batch_size": batch_size, "seed": seed, "device": device, "precision": precision,
             "trust": {"ood": ood, "calibrate": calibrate}}
    cfg = load_config(TrainConfig, config, given)
    if resume:
        changed = {k for k, v in given.items()
                   if v is not None and not (isinstance(v, dict) and set(v.values()) == {None})}
        cfg = resolve_resume_config(Path(cfg.out), cfg, changed)
    result = run_training(cfg, resume=resume, progress=not quiet)
    if json_out:
        _print_json(result.to_dict())
    else:
        stderr_console.print(
            f"[bold green]done[/]: val accuracy {result.val_accuracy:.3f} after "
            f"{result.epochs_run} epochs (best epoch {result.best_epoch})\n"
            f"  bundle: {result.bundle}\n  report: {result.report}"
        )


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
    epochs: Annotated[int | None, typer.Option(help="(default: 10)")] = None,
    out: Annotated[str | None, typer.Option(help="Run folder; the bundle goes to OUT/bundle. "
                                            "(default: runs/distill)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with any distill or training "
                                                "option; flags given here override it.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="(default: 32)")] = None,
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
             "epochs": epochs, "out": out, "batch_size": batch_size, "seed": seed,
             "device": device, "precision": precision}
    cfg = load_config(DistillConfig, config, given)
    if resume:
        cfg = resolve_resume_config(Path(cfg.out), cfg,
                                    {k for k, v in given.items() if v is not None})
    result = run_distill(cfg, resume=resume, progress=not quiet)
    if json_out:
        _print_json(result.to_dict())
    else:
        stderr_console.print(
            f"[bold green]done[/]: student val accuracy {result.val_accuracy:.3f} (teacher "
            f"{result.teacher['val_accuracy']:.3f}) after {result.epochs_run} epochs\n"
            f"  bundle: {result.bundle}\n  report: {result.report}"
        )


@app.command(name="eval")
def eval_(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `vitkit train`.")],
    data: Annotated[str, typer.Argument(help="Labelled images: uses test/ if present, else "
                                        "val/, else every image.")],
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    variant: Annotated[str | None, typer.Option(
        help="Which variant runs the model (onnx-fp32, openvino-int8, …; see `vitkit bench`). "
             "(default: torch-fp32)")] = None,
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
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Accuracy, balanced accuracy, per-class precision/recall/F1, confusion matrix, ECE."""
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
        _print_json(result)
        return
    table = Table(title=f"{bundle} on {data} ({result['split']}, n={result['n']})")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for label, m in result["per_class"].items():
        table.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
                      str(m["support"]))
    stderr_console.print(table)
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
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched "
                                               "recursively) or globs such as 'imgs/*.jpg'.")],
    top_k: Annotated[int, typer.Option(help="How many classes to list per image.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Also write a CSV file.")] = None,
    variant: Annotated[str | None, typer.Option(
        help="Which variant runs the model (onnx-fp32, openvino-int8, …; see `vitkit bench`). "
             "(default: torch-fp32)")] = None,
    tta: Annotated[str, typer.Option(
        help="Test-time augmentation: none, flip or flip-scale; scores are averaged over the "
             "views and the slowdown is printed on stderr. (default: none)")] = "none",
    no_ood: Annotated[bool, typer.Option(
        "--no-ood", help="Always name a class, even for images the bundle's OOD detector "
                         "finds unlike the training data (otherwise labelled 'unknown').")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Classify images; unreadable files are reported, never fatal. Scores are probabilities,
    calibrated when the bundle holds a temperature (`vitkit calibrate`). With an OOD fit in
    the bundle (`vitkit ood fit`, done by `train`), images unlike the training data get the
    label "unknown" and every result an ood_score."""
    from vitkit.classify.predict import Prediction, expand_paths, load
    from vitkit.classify.tta import TTA_VIEWS, TtaTiming

    predictor = load(bundle, variant=variant, tta=tta, ood=not no_ood)
    files, missing = expand_paths(paths)
    timing = TtaTiming(len(TTA_VIEWS[tta])) if tta != "none" else None
    results = [*missing, *predictor.predict_paths(files, top_k=top_k, batch_size=batch_size,
                                                  timing=timing)]
    if timing is not None and timing.images:
        stderr_console.print(f"TTA {tta}: {timing.views} views, {timing.slowdown:.2f}x the "
                             f"plain model time ({1000 * timing.seconds_per_image:.1f} vs "
                             f"{1000 * timing.plain_seconds_per_image:.1f} ms/image)")
    if csv_file is not None:
        with csv_file.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "score", "error"])
            for r in results:
                if isinstance(r, Prediction):
                    writer.writerow([r.path, r.label, f"{r.score:.6f}", ""])
                else:
                    writer.writerow([r.path, "", "", r.error])
    if json_out:
        _print_json([r.to_dict() for r in results])
        return
    table = Table()
    for col in ("path", "label", "score"):
        table.add_column(col)
    for r in results:
        if isinstance(r, Prediction):
            table.add_row(r.path, r.label, f"{r.score:.3f}")
        else:
            table.add_row(r.path, f"[red]error[/]: {r.error}", "")
    stderr_console.print(table)


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
    out: Annotated[Path, typer.Option(help="Where the demo writes its run.")] = Path("demo-output"),
    epochs: Annotated[int, typer.Option(help="Training epochs (2/3 head, 1/3 top blocks).")] = 3,
) -> None:
    """Train efficientnet_lite0 on the embedded textile images, evaluate, predict, report."""
    from vitkit.workflows.demo import run_demo

    run_demo(out, epochs=epochs)


@app.command()
def quantize(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    method: Annotated[str | None, typer.Option(
        help="static (int8, calibrated), dynamic (int8 weights), bf16 or fp16. "
             "(default: static; dynamic on torch)")] = None,
    runtime: Annotated[str | None, typer.Option(
        help="openvino (NNCF; transformer preset for ViTs), onnxruntime (QDQ) or torch. "
             "(default: the fastest installed, OpenVINO when present)")] = None,
    calib: Annotated[str | None, typer.Option(
        help="Images to calibrate static int8 on. (default: the bundle's training images)")
    ] = None,
    data: Annotated[str | None, typer.Option(
        help="Labelled images to measure accuracy on: their val/ split (plain class folders "
             "are split as training splits them). (default: the bundle's validation split)")
    ] = None,
    max_drop: Annotated[float, typer.Option(
        help="Largest accepted accuracy drop vs torch-fp32, in points; a bigger drop exits "
             "2 and writes nothing.")] = 1.0,
    calib_limit: Annotated[int, typer.Option(help="Most calibration images used.")] = 300,
    tome: Annotated[int, typer.Option(
        help="ViTs: merge this many similar tokens per block (ToMe) before quantizing; the "
             "variant is named …-tomeR. Less work per image for a little accuracy; compare "
             "rates first with `vitkit bench --tome`. (default: 0, off)")] = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Quantize a bundle's model and write the variant into the bundle with its accuracy.

    The variant is measured against torch-fp32 on the validation images; when it loses more
    than --max-drop points it is refused (exit 2, nothing written; with --json the measured
    numbers are still printed, with "refused": true). Run it with `vitkit predict|eval
    --variant NAME` or `vitkit.load(bundle, variant=NAME)`.
    """
    from vitkit.compress.quantize import QuantizationRefused
    from vitkit.workflows.quantize import run_quantize

    try:
        result = run_quantize(bundle, method=method, runtime=runtime, calib=calib, data=data,
                              max_drop=max_drop, calib_limit=calib_limit, tome=tome,
                              progress=not quiet)
    except QuantizationRefused as refused:
        if json_out:
            _print_json(refused.details)
        raise
    if json_out:
        _print_json(result)
        return
    table = Table(title=f"{result['variant']} ({result['runtime']}, {result['precision']})")
    for col in ("accuracy", "torch-fp32", "drop (points)", "top-1 agreement", "size MB"):
        table.add_column(col, justify="right")
    drop = result["accuracy_drop"]
    table.add_row(_fmt(result["accuracy"]), _fmt(result["reference_accuracy"]),
                  "n/a" if drop is None else f"{drop:.2f}", _fmt(result["agreement"]),
                  "built on load" if result["size_mb"] is None else f"{result['size_mb']:.2f}")
    stderr_console.print(table)
    unknown = " (accuracy unknown: no validation images)" if result["accuracy"] is None else ""
    stderr_console.print(f"[bold green]done[/]: recorded {result['variant']} in {bundle}"
                         f"{unknown}; use it with --variant {result['variant']}")


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    variants: Annotated[str, typer.Option(help="all, or comma-separated variant names such as "
                                          "torch-fp32,onnx-int8.")] = "all",
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes for throughput; "
                                       "latency is always at batch 1.")] = "1,8,32",
    data: Annotated[str | None, typer.Option(help="Labelled validation images for accuracy. "
                                             "(default: the bundle's validation split)")
                    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch, ONNX Runtime and "
                                                "OpenVINO. (default: torch's default)")] = None,
    tome: Annotated[str | None, typer.Option(help="ViT only: also measure torch fp32 with token "
                                             "merging, R tokens merged per block, e.g. 4,8,13.")
                    ] = None,
    max_images: Annotated[int, typer.Option(help="Most validation images per variant.")] = 1000,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Also write a CSV file.")] = None,
    html_file: Annotated[Path | None, typer.Option("--html", help="Also write an HTML report "
                                                   "(table and accuracy-vs-latency plot) to "
                                                   "this file.")] = None,
    quick: Annotated[bool, typer.Option(help="A few runs per measurement (smoke tests; "
                                        "noisy figures).")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Size, parameters, accuracy and drop vs fp32, agreement, latency, throughput, peak memory
    and load time of every variant; variants that cannot run here are listed as skipped."""
    from vitkit.bench import QUICK, BenchConfig, Budget, run_bench
    from vitkit.bench.output import bench_table, write_csv
    from vitkit.config import load_config

    names = None if variants.strip() == "all" else [n for n in variants.split(",") if n.strip()]
    given = {"variants": [n.strip() for n in names] if names else None,
             "batches": _int_list(batch, "--batch"), "data": data, "threads": threads,
             "tome": _int_list(tome, "--tome"), "max_images": max_images}
    cfg = load_config(BenchConfig, None, given)

    def announce(name: str) -> None:
        if not quiet:
            stderr_console.print(f"measuring {name} …", highlight=False)

    result = run_bench(bundle, cfg, QUICK if quick else Budget(), on_variant=announce)
    if csv_file is not None:
        write_csv(result, csv_file)
    if html_file is not None:
        from vitkit.report.bench import write_bench_report

        write_bench_report(html_file, result.to_dict())
    if json_out:
        _print_json(result.to_dict())
        return
    stderr_console.print(bench_table(result))
    for path in (csv_file, html_file):
        if path is not None:
            stderr_console.print(f"  wrote {path}")


@app.command(name="export")
def export_(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    format_: Annotated[str, typer.Option(
        "--format",
        help="onnx, openvino, torchscript, mobile (TorchScript lite .ptl), tflite (needs "
             "litert-torch), coreml (not built in: says why), or all (the first four); "
             "comma-separate several.")] = "all",
    data: Annotated[str | None, typer.Option(
        help="Labelled images for the parity check. (default: the bundle's validation "
             "split)")] = None,
    opset: Annotated[int | None, typer.Option(
        help="ONNX opset. (default: 18 (17 when the legacy exporter is needed))")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch in the parity check.")] = 32,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export the model for other runtimes, each checked against PyTorch right away.

    Files go to BUNDLE/variants/ with preprocessing.json (labels, input size, mean/std) beside
    them; max abs diff, top-1 agreement and accuracy on the validation images are recorded in
    the bundle. Run ONNX, OpenVINO and TorchScript exports with `--variant onnx-fp32` etc.
    A runtime that is not installed is skipped with what to install.
    """
    from vitkit.workflows.export import run_export

    result = run_export(bundle, [format_], data=data, batch_size=batch_size, opset=opset,
                        progress=not quiet)
    for r in result.exports:
        if r.skipped:
            stderr_console.print(f"[yellow]skipped {r.format}[/]: {r.skipped}", highlight=False)
    for warning in result.warnings:
        stderr_console.print(f"[bold red]WARNING[/] {warning}", highlight=False)
    if json_out:
        _print_json(result.to_dict())
        return
    table = Table(title=f"{bundle}: exports checked on {result.reference}")
    for col in ("format", "file", "size MB", "max abs diff", "top-1 agreement", "accuracy"):
        table.add_column(col, justify="left" if col in ("format", "file") else "right")
    for r in result.succeeded:
        parity = r.parity or {}
        flag = "" if parity.get("ok", True) else " [bold red]FAILED[/]"
        table.add_row(r.format, str(r.file), f"{r.size_mb:.2f}",
                      f"{parity.get('max_abs_diff', float('nan')):.2g}{flag}",
                      _fmt(parity.get("top1_agreement")), _fmt(r.accuracy))
    stderr_console.print(table)


anomaly_app = typer.Typer(
    help="Anomaly detection learned from normal images only: fit, score, eval.",
    no_args_is_help=True,
)
@app.command()
def robustness(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    data: Annotated[str, typer.Argument(help="Labelled images: uses test/ if present, else "
                                        "val/, else every image (as `vitkit eval`).")],
    variant: Annotated[str | None, typer.Option(
        help="Which variant is measured (openvino-int8, …); attacks are then crafted on the "
             "fp32 torch model and transferred. (default: torch-fp32)")] = None,
    noise: Annotated[str | None, typer.Option(
        help="Gaussian noise standard deviations, in [0,1] pixel units. "
             "(default: 0.02,0.05,0.1,0.2)")] = None,
    eps: Annotated[str, typer.Option(
        help="FGSM/PGD L-inf epsilons in 1/255 units; empty for no attacks. "
             "(default: 1,2,4,8)")] = "1,2,4,8",
    pgd_steps: Annotated[int, typer.Option(help="PGD steps (step size 2.5 eps/steps, random "
                                           "start). (default: 10)")] = 10,
    corruptions: Annotated[str | None, typer.Option(
        help="Comma-separated corruption families: noise, blur, jpeg, brightness, contrast. "
             "(default: all)")] = None,
    limit: Annotated[int, typer.Option(
        help="Most images used (a class-balanced, seeded subset). (default: 500)")] = 500,
    out: Annotated[Path | None, typer.Option(
        help="Folder for robustness.json and robustness.png. (default: the bundle's run "
             "folder when it sits in one, else none)")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch. (default: 32)")] = 32,
    seed: Annotated[int, typer.Option(help="Seeds the subset, the noise and PGD's random "
                                      "start. (default: 0)")] = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Accuracy under Gaussian noise, blur, JPEG, brightness and contrast changes, and under
    FGSM and PGD attacks at several epsilons.

    Corruptions are applied to the resized, cropped pixels before normalisation and measured
    on the chosen variant (int8 robustness included). When the bundle sits in a training run
    folder, robustness.json and robustness.png are written there and its report re-rendered.
    """
    from vitkit.workflows.robustness import run_robustness

    families = None if corruptions is None else [c.strip() for c in corruptions.split(",")
                                                 if c.strip()]
    result = run_robustness(bundle, data, variant=variant, noise=_float_list(noise, "--noise"),
                            epsilons=_float_list(eps, "--eps") or [], pgd_steps=pgd_steps,
                            limit=limit, corruptions=families, out=out, batch_size=batch_size,
                            seed=seed, progress=not quiet)
    for note in result.notes:
        stderr_console.print(f"[yellow]note:[/] {note}", highlight=False)
    if json_out:
        _print_json(result.to_dict())
        return
    table = Table(title=f"{bundle} ({result.variant}) on {data} ({result.split}, "
                        f"n={result.n}): clean accuracy {result.clean_accuracy:.3f}")
    for col in ("perturbation", "severity", "accuracy", "drop"):
        table.add_column(col, justify="left" if col == "perturbation" else "right")
    for c in result.corruptions:
        table.add_row(c.name, f"{c.severity:g}", f"{c.accuracy:.3f}", f"{c.drop:+.3f}")
    for a in result.adversarial:
        name = a.attack.upper() + (" (transferred)" if a.transferred else "")
        table.add_row(name, f"{a.epsilon:g}/255", f"{a.accuracy:.3f}", f"{a.drop:+.3f}")
    stderr_console.print(table)
    stderr_console.print(f"{result.seconds:.1f} s" + "".join(f"\n  wrote {f}"
                                                          for f in result.files))


@app.command()
def calibrate(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    data: Annotated[str | None, typer.Argument(
        help="Labelled images: their val/ split (plain class folders are split as training "
             "splits them). (default: the bundle's own validation split)")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Folder for calibration.json and reliability.png. (default: the bundle's run "
             "folder when it sits in one, else none)")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch. (default: 32)")] = 32,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit temperature scaling on validation images and store it in the bundle.

    Predict and eval then report calibrated probabilities (softmax of logits / T); the
    predicted classes do not change. Shows ECE and NLL before and after.
    """
    from vitkit.workflows.calibration import run_calibrate

    result = run_calibrate(bundle, data, out=out, batch_size=batch_size, progress=not quiet)
    if json_out:
        _print_json(result)
        return
    stderr_console.print(
        f"[bold green]calibrated[/] on {result['data']}: temperature "
        f"{result['temperature']:.3f}; ECE {result['ece_before']:.4f} -> "
        f"{result['ece_after']:.4f}; NLL {result['nll_before']:.4f} -> "
        f"{result['nll_after']:.4f} (accuracy {result['accuracy']:.3f}, unchanged)"
        + "".join(f"\n  wrote {f}" for f in result["files"]), highlight=False)


def _float_list(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise VitkitError(f"{option} takes comma-separated numbers such as 1,2,4; got "
                          f"{text!r}.") from None


ood_app = typer.Typer(
    help="Out-of-distribution detection: fit a detector into a classifier bundle, evaluate it.",
    no_args_is_help=True,
)
app.add_typer(ood_app, name="ood")


@ood_app.command("fit")
def ood_fit(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    data: Annotated[str | None, typer.Argument(
        help="Labelled images, split as training splits them: statistics from train, the "
             "threshold from val. (default: the bundle's own training data)")] = None,
    method: Annotated[str, typer.Option(
        help="auto, msp, energy, mahalanobis, mahalanobis_norm, relative_mahalanobis, knn or "
             "vim; auto: knn for CNNs, mahalanobis_norm for ViTs. (default: auto)")] = "auto",
    accept: Annotated[float, typer.Option(
        help="Share of in-distribution validation images to accept. (default: 0.95)")] = 0.95,
    batch_size: Annotated[int, typer.Option(help="Images per batch. (default: 32)")] = 32,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit OOD statistics and a threshold into the bundle (`train` does this by default).

    From then on `predict` and every Predictor label images unlike the training data
    "unknown". Every method's threshold is recorded; only the chosen one is stored.
    """
    from vitkit.workflows.ood import run_ood_fit

    result = run_ood_fit(bundle, data, method=method, accept=accept, batch_size=batch_size,
                         progress=not quiet)
    if json_out:
        _print_json(result.to_dict())
        return
    rough = " [yellow](rough: fewer than 20 val images)[/]" if result.rough else ""
    stderr_console.print(
        f"[bold green]OOD fitted[/]: {result.method} ({result.family}) on {result.fitted_on}; "
        f"threshold {result.threshold:.4g} accepts {result.accept_rate_val:.1%} of val"
        f"{rough}\n  bundle: {result.bundle}", highlight=False)


@ood_app.command("eval")
def ood_eval(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    in_data: Annotated[str, typer.Option(
        "--in", help="In-distribution images: the held-out val split when this is the "
                     "bundle's training data, else its test/ or val/ split, else all.")],
    out_dir: Annotated[str, typer.Option(
        "--out", help="Out-of-distribution images (a folder, searched recursively).")],
    batch_size: Annotated[int, typer.Option(help="Images per batch. (default: 32)")] = 32,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """AUROC, FPR95 and accept rates of every OOD method on in- and out-of-distribution images.

    Each method is fitted on the bundle's training images and thresholded on its val split.
    """
    from vitkit.workflows.ood import run_ood_eval

    result = run_ood_eval(bundle, in_data, out_dir, batch_size=batch_size, progress=not quiet)
    if json_out:
        _print_json(result)
        return
    table = Table(title=f"{bundle}: {result['n_in']} in ({result['in']}) vs {result['n_out']} "
                        f"out ({result['out']})")
    for col in ("method", "AUROC", "FPR95", "in accepted", "out refused"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for name, m in result["methods"].items():
        mark = " *" if name == result["selected"] else ""
        table.add_row(name + mark, f"{m['auroc']:.3f}", f"{m['fpr95']:.3f}",
                      f"{m['accept_rate']:.1%}", f"{m['refuse_rate_out']:.1%}")
    stderr_console.print(table)
    stored = result["stored"]
    stderr_console.print(
        f"* selected: {result['selected']}; best AUROC here: {result['best']}; thresholds "
        f"from the {result['threshold_from']}"
        + ("" if stored is None else f"\n  stored detector: accepts {stored['accept_rate']:.1%}"
           f" of in, refuses {stored['refuse_rate_out']:.1%} of out"), highlight=False)


@app.command()
def drift(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    new_data: Annotated[str, typer.Argument(help="New images (a folder searched "
                                            "recursively, a file or a glob); no labels "
                                            "needed.")],
    permutations: Annotated[int, typer.Option(
        min=10, help="Permutations of the feature test. (default: 500)")] = 500,
    alpha: Annotated[float, typer.Option(
        help="A test whose p-value is below this says drifted. (default: 0.01)")] = 0.01,
    seed: Annotated[int, typer.Option(help="(default: 0)")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per batch. (default: 32)")] = 32,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compare a batch of new images with the training data: share of OOD images, feature
    distance (MMD, permutation test) and predicted-class mix. Drifted when any test's p-value
    is below --alpha."""
    from vitkit.workflows.drift import run_drift

    result = run_drift(bundle, new_data, batch_size=batch_size, progress=not quiet,
                       permutations=permutations, alpha=alpha, seed=seed)
    if json_out:
        _print_json(result)
        return
    feature, mix = result["feature_distance"], result["class_mix"]
    lines = [f"{result['n_new']} new images vs {result['reference']['rows']} reference rows"]
    if result["ood_share"] is not None:
        lines.append(f"  OOD share {result['ood_share']:.1%} (expected "
                     f"{result['expected_ood_share']:.1%}, p = {result['ood_p_value']:.3g})")
    lines.append(f"  feature MMD² {feature['statistic']:.4g} (p = {feature['p_value']:.3g})")
    lines.append(f"  class mix TVD {mix['tvd']:.3f} (p = {mix['p_value']:.3g}): " + ", ".join(
        f"{label} {share:.0%} (was {mix['reference'][label]:.0%})"
        for label, share in mix["new"].items()))
    verdict = ("[bold red]drifted[/]: " + "; ".join(result["reasons"]) if result["drifted"]
               else "[bold green]no drift detected[/]")
    stderr_console.print("\n".join([*lines, verdict]), highlight=False)


@app.command()
def explain(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched "
                                               "recursively) or globs such as 'imgs/*.jpg'.")],
    method: Annotated[str, typer.Option(
        help="auto, gradcam, gradcam++, rollout or attn-last (auto: gradcam for CNNs, rollout "
             "for ViTs). (default: auto)")] = "auto",
    class_label: Annotated[str | None, typer.Option(
        "--class", help="Explain this class instead of the predicted one.")] = None,
    layer: Annotated[str | None, typer.Option(
        help="Grad-CAM target layer, a dotted module name such as layer4 or blocks.11.norm1 "
             "(default: the last feature map / the last block's first norm)")] = None,
    discard_ratio: Annotated[float, typer.Option(
        help="Rollout: share of the lowest attention weights dropped per layer (0 keeps "
             "all). (default: 0.9)")] = 0.9,
    head_fusion: Annotated[str, typer.Option(
        help="Rollout and attn-last: mean, max or min over heads. (default: max)")] = "max",
    out: Annotated[Path, typer.Option(help="Folder for <image>.png overlays, <image>.npy maps, "
                                      "explanations.json and index.html. "
                                      "(default: runs/explain)")] = Path("runs/explain"),
    variant: Annotated[str | None, typer.Option(
        help="Variant whose predictions to explain; exported runtimes have no gradients, so "
             "the bundle's torch model explains them. (default: torch-fp32)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch. (default: 8)")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda. (default: cpu)")] = "cpu",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Heat maps of what the model looked at: Grad-CAM / Grad-CAM++ for CNNs, attention
    rollout for ViTs; unreadable files are reported, never fatal."""
    from vitkit.workflows.explain import explain_paths

    if head_fusion not in ("mean", "max", "min"):
        raise VitkitError(f"--head-fusion must be mean, max or min, not {head_fusion!r}.")
    result = explain_paths(bundle, paths, method=method, target_class=class_label, layer=layer,
                           out_dir=out, discard_ratio=discard_ratio,
                           head_fusion=head_fusion,  # type: ignore[arg-type]
                           variant=variant, device=device, batch_size=batch_size,
                           progress=not quiet and not json_out)
    for note in result.notes:
        stderr_console.print(f"[yellow]note:[/] {note}", highlight=False)
    if json_out:
        _print_json(result.to_dict())
        return
    where = f" (layer {result.layer})" if result.layer else ""
    table = Table(title=f"{result.method}{where}")
    for col in ("path", "predicted", "score", "explains", "overlay"):
        table.add_column(col, justify="right" if col == "score" else "left")
    for e in result.explanations:
        table.add_row(e.path, e.label, f"{e.score:.3f}", e.target, str(e.overlay))
    for s in result.skipped:
        table.add_row(s.path, f"[red]skipped[/]: {s.error}", "", "", "")
    stderr_console.print(table)
    stderr_console.print(f"{len(result.explanations)} explained, {len(result.skipped)} skipped: "
                         f"{result.out_dir / 'index.html'}", highlight=False)


app.add_typer(anomaly_app, name="anomaly")


@anomaly_app.command("fit")
def anomaly_fit(
    normal_dir: Annotated[str, typer.Argument(help="Folder of normal (good) images, searched "
                                              "recursively, or an MVTec root (uses train/good).")],
    method: Annotated[str | None, typer.Option(help="patchcore (textures and objects), padim "
                                               "(aligned parts) or patchmean (uniform "
                                               "backgrounds, tiny spots; no network). "
                                               "(default: patchcore)")] = None,
    model: Annotated[str | None, typer.Option(help="Backbone: a timm CNN or ViT name, "
                                              "hf:<org>/<model> or a local Hugging Face folder. "
                                              "(default: efficientnet_lite0)")] = None,
    weights: Annotated[str | None, typer.Option(help="auto, none or a weights file.")] = None,
    layers: Annotated[str | None, typer.Option(help="Comma-separated feature stages (CNN) or "
                                               "blocks (ViT), e.g. 2,3. (default: per method)")
                      ] = None,
    image_size: Annotated[int | None, typer.Option(help="CNN input size in px (whole image, "
                                                   "no crop). (default: the backbone's)")] = None,
    coreset_ratio: Annotated[float | None, typer.Option(help="PatchCore memory-bank share "
                                                        "kept. (default: 0.1)")] = None,
    global_stats: Annotated[bool | None, typer.Option(
        "--global-stats/--no-global-stats",
        help="PatchCore: also score each image's feature statistics as a whole, to catch "
             "defects that change the whole image a little (finer weave, lower contrast, a "
             "colour cast) and that no single patch shows. (default: off)")] = None,
    patch_size: Annotated[int | None, typer.Option(help="patchmean patch side in px.")] = None,
    resolution: Annotated[int | None, typer.Option(help="patchmean working long side in px. "
                                                   "(default: native, up to 1024)")] = None,
    holdout: Annotated[float | None, typer.Option(help="Share of normal images held out to "
                                                  "set the threshold. (default: 0.2)")] = None,
    percentile: Annotated[float | None, typer.Option(help="Threshold percentile of held-out "
                                                     "normal scores. (default: 99)")] = None,
    out: Annotated[str | None, typer.Option(help="Bundle folder to write. "
                                            "(default: anomaly-model)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with any fit option.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="(default: 16)")] = None,
    seed: Annotated[int | None, typer.Option(help="(default: 0)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Learn what normal looks like from good images and write an anomaly bundle.

    A share of the images is held out and never memorised: the threshold is a high percentile
    of their scores. Unreadable images are skipped and listed in BUNDLE/skipped.csv.
    """
    from vitkit.anomaly.config import AnomalyFitConfig
    from vitkit.config import load_config
    from vitkit.workflows.anomaly import run_fit

    given = {"data": normal_dir, "method": method, "model": model, "weights": weights,
             "layers": _int_list(layers, "--layers"), "image_size": image_size,
             "coreset_ratio": coreset_ratio, "global_stats": global_stats,
             "patch_size": patch_size, "resolution": resolution,
             "holdout": holdout, "percentile": percentile, "out": out, "batch_size": batch_size,
             "seed": seed, "device": device}
    cfg = load_config(AnomalyFitConfig, config, given)
    result = run_fit(cfg, progress=not quiet)
    if json_out:
        _print_json(result.to_dict())
        return
    details = result.details
    bank = (f", memory bank {details['bank_before']} -> {details['bank_after']} patches"
            if "bank_after" in details else "")
    stderr_console.print(
        f"[bold green]done[/]: {result.method} learned {result.n_fit} normal images in "
        f"{result.fit_seconds:.1f} s{bank}; threshold {result.threshold:.4g} from "
        f"{result.n_holdout} held-out images ({result.n_skipped} skipped)\n"
        f"  bundle: {result.bundle}"
    )


@anomaly_app.command("score")
def anomaly_score(
    bundle: Annotated[Path, typer.Argument(help="Bundle written by `vitkit anomaly fit`.")],
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched "
                                               "recursively) or globs such as 'imgs/*.png'.")],
    maps: Annotated[Path | None, typer.Option("--maps", help="Write a heat-map overlay PNG per "
                                              "image into this folder.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score images: 0..1 (0.5 = threshold) and normal/anomaly; unreadable files are reported."""
    from vitkit.anomaly.detector import AnomalyScore
    from vitkit.workflows.anomaly import run_score

    results = run_score(bundle, paths, maps_dir=maps, batch_size=batch_size, device=device,
                        progress=not quiet)
    if json_out:
        _print_json([r.to_dict() for r in results])
        return
    table = Table()
    for col in ("path", "label", "score"):
        table.add_column(col)
    for r in results:
        if isinstance(r, AnomalyScore):
            style = "bold red" if r.label == "anomaly" else "green"
            table.add_row(r.path, f"[{style}]{r.label}[/]", f"{r.score:.3f}")
        else:
            table.add_row(r.path, f"[red]error[/]: {r.error}", "")
    stderr_console.print(table)
    if maps is not None:
        stderr_console.print(f"maps: {maps}")


@anomaly_app.command("eval")
def anomaly_eval(
    bundle: Annotated[Path, typer.Argument(help="Bundle written by `vitkit anomaly fit`.")],
    data_root: Annotated[Path, typer.Argument(help="MVTec-style root: test/good/, "
                                              "test/<defect>/, optional "
                                              "ground_truth/<defect>/<name>_mask.png.")],
    threshold: Annotated[str, typer.Option(help="stored: the bundle's threshold; f1: set the "
                                           "F1-optimal threshold on this data and store it in "
                                           "the bundle (the figures are then optimistic).")
                         ] = "stored",
    out: Annotated[Path | None, typer.Option(help="Folder for eval.json and report.html. "
                                             "(default: BUNDLE/eval)")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Image AUROC/AP/F1, pixel AUROC and PRO (with masks), per defect type, and a report."""
    from vitkit.workflows.anomaly import run_eval

    if threshold not in ("stored", "f1"):
        raise VitkitError(f"--threshold must be 'stored' or 'f1', not {threshold!r}.")
    result = run_eval(bundle, data_root, out=out, threshold=threshold, batch_size=batch_size,
                      device=device, progress=not quiet)
    if json_out:
        _print_json(result)
        return
    table = Table(title=f"{bundle} on {data_root}")
    for col in ("defect", "n", "AUROC", "AP", "F1"):
        table.add_column(col, justify="left" if col == "defect" else "right")
    for name, m in result["per_defect"].items():
        table.add_row(name, str(m["n"]), _fmt(m["image_auroc"]), _fmt(m["image_ap"]),
                      _fmt(m["f1"]))
    stderr_console.print(table)
    extra = "".join(f"  {label} {_fmt(result[key])}" for key, label in
                    (("pixel_auroc", "pixel AUROC"), ("pro", "PRO")) if key in result)
    stderr_console.print(f"image AUROC {_fmt(result['image_auroc'])}  AP "
                         f"{_fmt(result['image_ap'])}  F1 {_fmt(result['f1'])}{extra}\n"
                         f"  report: {(out or bundle / 'eval') / 'report.html'}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise VitkitError(f"{option} takes comma-separated integers such as 2,3; got "
                          f"{text!r}.") from None


def main() -> None:
    """Entry point: user errors exit 2 with a message, never a traceback."""
    try:
        app(standalone_mode=False)
    except VitkitError as exc:
        stderr_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        stderr_console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - click usage errors carry their own exit code
        usage_errors, aborts = _click_exception_types()
        if isinstance(exc, usage_errors):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if isinstance(exc, aborts):
            sys.exit(1)
        raise


def _click_exception_types() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """Usage-error and abort classes of click and of typer's vendored copy of click.

    Recent typer releases ship click as ``typer._click`` and no longer install click itself,
    so checking only ``click.exceptions`` turned every usage error into a traceback.
    """
    usage: list[type[Exception]] = []
    aborts: list[type[Exception]] = []
    try:
        import click
    except ImportError:
        pass
    else:
        usage.append(click.exceptions.ClickException)
        aborts.append(click.exceptions.Abort)
    try:
        from typer._click.exceptions import ClickException as VendoredClickException
    except ImportError:
        pass
    else:
        usage.append(VendoredClickException)
    aborts.append(typer.Abort)
    return tuple(usage), tuple(aborts)
