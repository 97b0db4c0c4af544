"""`vitkit quantize`, `bench`, `export`: light and fast variants of a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast, get_args

import typer
from rich.table import Table

from vitkit.cli.common import (
    JsonOpt,
    QuietOpt,
    app,
    fmt,
    int_list,
    print_json,
)
from vitkit.console import stderr_console


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
    image_size: Annotated[int | None, typer.Option(
        help="Run the model on its input resized to this many pixels (resize inside the "
             "graph; fewer tokens for ViTs made with dynamic_img_size, less work for CNNs); "
             "the variant is named …-SIZEpx and checked by --max-drop like any other. "
             "(default: the bundle's own size)")] = None,
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
                              image_size=image_size, progress=not quiet)
    except QuantizationRefused as refused:
        if json_out:
            print_json(refused.details)
        raise
    if json_out:
        print_json(result)
        return
    table = Table(title=f"{result['variant']} ({result['runtime']}, {result['precision']})")
    for col in ("accuracy", "torch-fp32", "drop (points)", "top-1 agreement", "size MB"):
        table.add_column(col, justify="right")
    drop = result["accuracy_drop"]
    table.add_row(fmt(result["accuracy"]), fmt(result["reference_accuracy"]),
                  "n/a" if drop is None else f"{drop:.2f}", fmt(result["agreement"]),
                  "built on load" if result["size_mb"] is None else f"{result['size_mb']:.2f}")
    stderr_console.print(table)
    unknown = " (accuracy unknown: no validation images)" if result["accuracy"] is None else ""
    stderr_console.print(f"[bold green]done[/]: recorded {result['variant']} in {bundle}"
                         f"{unknown}; use it with --variant {result['variant']}")


@app.command()
def optimize(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle folder.")],
    max_drop: Annotated[float, typer.Option(
        help="Largest accepted accuracy drop vs torch-fp32, in points.")] = 0.5,
    min_agreement: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Smallest accepted share of images on which a candidate's "
        "top-1 answer equals torch-fp32's.")] = 0.99,
    goal: Annotated[str, typer.Option(
        help="throughput (images/s at --batch; for servers and folders) or latency (batch-1 "
             "median; for one image at a time).")] = "throughput",
    batch: Annotated[int, typer.Option(min=1, help="Batch size of the throughput goal.")] = 32,
    candidates: Annotated[str | None, typer.Option(
        help="Comma-separated variant names to consider, e.g. openvino-int8,torch-bf16. "
             "(default: all whose runtime is installed)")] = None,
    tome: Annotated[str | None, typer.Option(
        help="ViTs: token-merging rates to try on OpenVINO int8, e.g. 4,8; 0 for none. "
             "(default: 4,8 for ViTs)")] = None,
    image_sizes: Annotated[str | None, typer.Option(
        help="Smaller input sizes to try on OpenVINO int8, e.g. 196,168 (resize inside the "
             "graph; ViTs need dynamic_img_size). (default: none)")] = None,
    data: Annotated[str | None, typer.Option(
        help="Labelled images for the accuracy guard. (default: the bundle's validation "
             "split)")] = None,
    rebuild: Annotated[bool, typer.Option(
        help="Build candidates again even when the bundle already has them.")] = False,
    default: Annotated[str | None, typer.Option(
        "--default", help="Make this variant the default by hand, without measuring (e.g. "
        "torch-fp32 to undo a choice).")] = None,
    quick: Annotated[bool, typer.Option(help="A few timing runs per variant (noisy).")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build the fast variants, measure them on this machine, and make the fastest one that
    keeps the accuracy the bundle's default variant.

    Candidates: torch bf16 and dynamic int8, OpenVINO bf16 and int8 (NNCF; transformer preset
    for ViTs), ONNX Runtime fp32 and int8, and for ViTs OpenVINO int8 with token merging.
    Each is measured against torch-fp32 on the validation images and timed here; one that
    loses more than --max-drop points or agrees on fewer than --min-agreement of the images
    is not eligible. The choice and every candidate's figures are written into vitkit.json;
    `vitkit predict`, `eval`, `bench`, `serve` and `vitkit.load(bundle)` then run the default
    variant unless --variant names another. Re-run it on the machine that will serve: speed
    does not travel between CPUs.
    """
    from vitkit.benchmark import QUICK, Budget
    from vitkit.workflows.optimize import Goal, run_optimize, set_default_variant

    if goal not in get_args(Goal):
        raise typer.BadParameter("choose throughput or latency", param_hint="--goal")
    if default is not None:
        record = set_default_variant(bundle, default)
        if json_out:
            print_json(record)
        else:
            stderr_console.print(f"[bold green]done[/]: {bundle} now runs {default} by default "
                                 f"(was {record['previous_default']})")
        return

    def log(message: str) -> None:
        if not quiet:
            stderr_console.print(f"[dim]{message}[/]", highlight=False)

    names = [n.strip() for n in candidates.split(",") if n.strip()] if candidates else None
    result = run_optimize(bundle, data=data, max_drop=max_drop, min_agreement=min_agreement,
                          goal=cast(Goal, goal), batch=batch, candidates=names,  # checked
                          tome=int_list(tome, "--tome") if tome is not None else None,
                          image_sizes=int_list(image_sizes, "--image-sizes") or (),
                          rebuild=rebuild, budget=QUICK if quick else Budget(), log=log)
    if json_out:
        print_json(result.to_dict())
        return
    table = Table(title=f"candidates measured on {result.machine['cpu']}, "
                        f"{result.machine['threads']} threads")
    for col in ("variant", "acc", "drop", "agree", "p50 ms", f"img/s b{batch}", "MB", ""):
        table.add_column(col, justify="left" if col in ("variant", "") else "right",
                         no_wrap=True)
    reasons = []
    for c in result.candidates:
        verdict = ("[bold green]default[/]" if c.name == result.default_variant
                   else "eligible" if c.eligible else f"[yellow]{c.status}[/]")
        if not c.eligible and c.reason:
            verdict = f"[yellow]{'not eligible' if c.status == 'ok' else c.status}[/]"
            reasons.append(f"{c.name}: {c.reason}")
        table.add_row(c.name, fmt(c.accuracy),
                      "" if c.accuracy_drop is None else f"{c.accuracy_drop:.2f}",
                      fmt(c.agreement), "" if c.latency_p50_ms is None
                      else f"{c.latency_p50_ms:.1f}", "" if c.throughput is None
                      else f"{c.throughput:.1f}", "" if c.size_mb is None
                      else f"{c.size_mb:.1f}", verdict)
    stderr_console.print(table)
    for reason in reasons:
        stderr_console.print(f"  {reason}", highlight=False)
    for note in result.notes:
        stderr_console.print(f"[yellow]note:[/] {note}", highlight=False)
    faster = f" ({result.speedup}x torch-fp32's {goal})" if result.speedup else ""
    stderr_console.print(f"[bold green]done[/]: default variant {result.default_variant}"
                         f"{faster}, was {result.previous_default}; recorded in {bundle}")


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
    from vitkit.benchmark import QUICK, BenchConfig, Budget, run_bench
    from vitkit.benchmark.output import (
        WIDE_TABLE_COLUMNS,
        bench_stacked,
        bench_table,
        write_csv,
    )
    from vitkit.config import load_config

    names = None if variants.strip() == "all" else [n for n in variants.split(",") if n.strip()]
    given = {"variants": [n.strip() for n in names] if names else None,
             "batches": int_list(batch, "--batch"), "data": data, "threads": threads,
             "tome": int_list(tome, "--tome"), "max_images": max_images}
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
        print_json(result.to_dict())
        return
    wide = stderr_console.width >= WIDE_TABLE_COLUMNS
    stderr_console.print(bench_table(result) if wide else bench_stacked(result))
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
    batch_size: Annotated[int, typer.Option(
        min=1, help="Images per batch in the parity check.")] = 32,
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
        print_json(result.to_dict())
        return
    table = Table(title=f"{bundle}: exports checked on {result.reference}")
    for col in ("format", "file", "size MB", "max abs diff", "top-1 agreement", "accuracy"):
        table.add_column(col, justify="left" if col in ("format", "file") else "right")
    for r in result.succeeded:
        parity = r.parity or {}
        flag = "" if parity.get("ok", True) else " [bold red]FAILED[/]"
        table.add_row(r.format, str(r.file), f"{r.size_mb:.2f}",
                      f"{parity.get('max_abs_diff', float('nan')):.2g}{flag}",
                      fmt(parity.get("top1_agreement")), fmt(r.accuracy))
    stderr_console.print(table)


@app.command()
def prune(
    bundle: Annotated[Path, typer.Argument(help="Classifier bundle of a timm ViT.")],
    out: Annotated[Path, typer.Option(help="Run folder of the recovery; the pruned bundle is "
                                      "OUT/bundle.")] = Path("runs/pruned"),
    mlp_keep: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of each block's MLP units kept (the least important on "
        "the training images go; rounded to multiples of 32).")] = 0.5,
    epochs: Annotated[int, typer.Option(min=1, help="Distillation epochs that recover the "
                                        "accuracy, the unpruned bundle as teacher.")] = 3,
    batch_size: Annotated[int | None, typer.Option(min=1, help="(default: distill's, 32)")
                          ] = None,
    data: Annotated[str | None, typer.Option(
        help="The labelled images the bundle was trained on. (default: the bundle's training "
             "data, with its split)")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Prune a ViT's MLP width and recover its accuracy by distillation from the unpruned
    model: a new, smaller bundle of the same architecture (a smaller mlp_ratio).

    Then measure it: `vitkit optimize OUT/bundle` builds and times its fast variants.
    """
    from vitkit.workflows.prune import run_prune

    options = {"batch_size": batch_size} if batch_size else {}
    result = run_prune(bundle, out, mlp_keep=mlp_keep, epochs=epochs, data=data,
                       progress=not quiet, distill_options=options)
    if json_out:
        print_json(result.to_dict())
        return
    accuracy = result.accuracy

    def shown(value: float | None) -> str:
        return "unknown" if value is None else f"{value:.3f}"

    stderr_console.print(
        f"[bold green]done[/]: MLP width {result.mlp_width[0]} -> {result.mlp_width[1]}, "
        f"{result.parameters[0] / 1e6:.1f}M -> {result.parameters[1] / 1e6:.1f}M parameters; "
        f"val accuracy {shown(accuracy.get('unpruned'))} unpruned, "
        f"{shown(accuracy.get('pruned'))} pruned, {shown(accuracy.get('recovered'))} after "
        f"{epochs} epochs of distillation\n  bundle: {result.bundle}", highlight=False)
