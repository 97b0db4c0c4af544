"""`vitkit segment train|eval|predict|export`: semantic segmentation from image/mask pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vitkit.cli.common import (
    JsonOpt,
    QuietOpt,
    app,
    finish_items,
    fmt,
    path_width,
    plural,
    print_json,
    short_path,
)
from vitkit.console import stderr_console

segment_app = typer.Typer(
    help="Semantic segmentation: a class per pixel, learned from image/mask pairs. train, "
         "eval, predict, export.",
    no_args_is_help=True,
)
app.add_typer(segment_app, name="segment")

_DATA_HELP = ("Folder with images/ and masks/ (a mask per image under the same name; 0/255 "
              "grey masks for one class, palette or index PNGs for several, named in "
              "data.yaml or classes.txt), optionally per split (train/, val/, test/); or an "
              "MVTec folder (ground_truth/<defect>/<name>_mask.png).")
_VARIANT_HELP = ("Variant to run: torch-fp32, or one `vitkit segment export` made (onnx-fp32, "
                 "openvino-fp32). (default: the bundle's default, torch-fp32)")


@segment_app.command("train")
def segment_train(
    data: Annotated[str, typer.Argument(help=_DATA_HELP)],
    out: Annotated[str | None, typer.Option(help="Run folder to write; the bundle goes to "
                                            "OUT/bundle. (default: runs/segment)")] = None,
    arch: Annotated[str | None, typer.Option(help="Decoder: unet, unetplusplus, fpn or "
                                             "deeplabv3plus. (default: unet)")] = None,
    encoder: Annotated[str | None, typer.Option(
        help="Encoder: a timm CNN as tu-<name>. efficientnet_lite0/1/2 bring ImageNet weights "
             "without internet. (default: tu-efficientnet_lite0)")] = None,
    weights: Annotated[str | None, typer.Option(
        help="Encoder weights: auto (offline package, else timm's hub), none (random) or a "
             "weights file. (default: auto)")] = None,
    size: Annotated[int | None, typer.Option(
        help="Training side in px, a multiple of 32; images are resized whole (no crop). "
             "(default: 256)")] = None,
    head_epochs: Annotated[int | None, typer.Option(
        min=0, help="Epochs with the pretrained encoder frozen. (default: 2)")] = None,
    full_epochs: Annotated[int | None, typer.Option(
        min=0, help="Epochs with every layer training, the encoder at 0.1x the rate. "
                    "(default: 8)")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="(default: 8)")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate. (default: 0.001)")
                  ] = None,
    val_fraction: Annotated[float | None, typer.Option(
        help="Share of the pairs held out for validation when the data has no val split. "
             "(default: 0.2)")] = None,
    seed: Annotated[int | None, typer.Option(help="(default: 0)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda. (default: auto)")
                      ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with any train option (e.g. "
                                                "num_workers, augmentation, patience).")
                      ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last "
                                         "checkpoint.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a segmenter on image/mask pairs and write a bundle.

    Stages: the decoder on a frozen pretrained encoder, then everything. Loss: Dice +
    cross-entropy. The best epoch by validation Dice (mean over the classes other than the
    background) is kept; every epoch is checkpointed and --resume continues a killed run.
    Unusable pairs (missing mask, another size, unknown values) are skipped and listed in
    OUT/skipped.csv.
    """
    from vitkit.config import load_config
    from vitkit.workflows.segment import (
        SegmentTrainConfig,
        resolve_segment_resume,
        run_segment_training,
    )

    given = {"data": data, "out": out, "arch": arch, "encoder": encoder, "weights": weights,
             "size": size, "head_epochs": head_epochs, "full_epochs": full_epochs,
             "batch_size": batch_size, "lr": lr, "val_fraction": val_fraction, "seed": seed,
             "device": device}
    cfg = load_config(SegmentTrainConfig, config, given)
    if resume:
        cfg = resolve_segment_resume(Path(cfg.out), cfg,
                                     {k for k, v in given.items() if v is not None})
    result = run_segment_training(cfg, resume=resume, progress=not quiet)
    if json_out:
        print_json(result.to_dict())
        return
    stderr_console.print(
        f"[bold green]done[/]: val Dice {fmt(result.dice)}, IoU {fmt(result.iou)} after "
        f"{plural(result.epochs_run, 'epoch')} (best epoch {result.best_epoch})\n"
        f"  bundle: {result.bundle}")


@segment_app.command("eval")
def segment_eval(
    bundle: Annotated[Path, typer.Argument(help="Bundle written by `vitkit segment train` "
                                           "(OUT/bundle).")],
    data: Annotated[str, typer.Argument(help=_DATA_HELP)],
    split: Annotated[str | None, typer.Option(
        help="train, val, test or all. (default: test if DATA has it, else val, else all)")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 8,
    variant: Annotated[str | None, typer.Option(help=_VARIANT_HELP)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="Folder for eval.json and report.html. "
                                             "(default: BUNDLE/eval)")] = None,
    report: Annotated[bool, typer.Option(
        "--report/--no-report", help="Write eval.json and report.html (per-class table, "
                                     "worst and best images by Dice).")] = True,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Dice and IoU per class and their means over the foreground classes, measured at each
    image's own size (the masks a user gets), and an HTML report."""
    from vitkit.workflows.segment import run_segment_eval

    result = run_segment_eval(bundle, data, split=split, batch_size=batch_size,
                              variant=variant, device=device, progress=not quiet, out=out,
                              report=report)
    report_file = (out or bundle / "eval") / "report.html"
    if json_out:
        print_json(result)
        if report and not quiet:
            stderr_console.print(f"report: {report_file}", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"{bundle} on {data} ({result['split']}, {result['n_images']} images)")
    for col in ("class", "Dice", "IoU", "pixels"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, m in result["per_class"].items():
        table.add_row(name, fmt(m["dice"]), fmt(m["iou"]), str(m["pixels"]))
    stderr_console.print(table)
    stderr_console.print(f"Dice {fmt(result['dice'])}  IoU {fmt(result['iou'])}  (foreground "
                         f"mean)  pixel accuracy {fmt(result['pixel_accuracy'])}  "
                         f"{result['n_skipped']} skipped"
                         + (f"\n  report: {report_file}" if report else ""))


@segment_app.command("predict")
def segment_predict(
    bundle: Annotated[Path, typer.Argument(help="Bundle written by `vitkit segment train`.")],
    images: Annotated[list[str], typer.Argument(help="Image files, folders (searched "
                                                "recursively) or globs such as 'imgs/*.png'.")],
    out: Annotated[Path, typer.Option(help="Folder for <name>_mask.png (palette PNG, the class "
                                      "index per pixel) and <name>_overlay.png.")],
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 8,
    variant: Annotated[str | None, typer.Option(help=_VARIANT_HELP)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a mask and an overlay per image, at the image's size; print the largest class
    and each class's share of the image.

    Exit code 0 when at least one image was predicted (failures are counted on stderr); 2
    when none could be."""
    from vitkit.workflows.segment import run_segment_predict

    records = run_segment_predict(bundle, images, out, batch_size=batch_size, variant=variant,
                                  device=device, progress=not quiet)
    failures = [(r["path"], r["error"]) for r in records if "error" in r]
    if json_out:
        print_json(records)
    else:
        table = Table()
        for col in ("path", "label", "classes"):
            table.add_column(col)
        width = path_width(50)
        for r in records:
            if "error" in r:
                table.add_row(short_path(r["path"], width), f"[red]error[/]: {r['error']}", "")
                continue
            shares = ", ".join(f"{name} {share:.1%}" for name, share in r["classes"].items()
                               if share > 0)
            table.add_row(short_path(r["path"], width), r["label"], shares)
        stderr_console.print(table)
        stderr_console.print(f"masks and overlays: {out}")
    finish_items("predicted", len(records) - len(failures), failures)


@segment_app.command("export")
def segment_export(
    bundle: Annotated[Path, typer.Argument(help="Bundle written by `vitkit segment train`.")],
    variant: Annotated[list[str] | None, typer.Option(
        help="onnx-fp32 or openvino-fp32; repeat for both. (default: onnx-fp32)")] = None,
    data: Annotated[str | None, typer.Option(
        help="Images to check the export on: a segmentation data folder, image files, folders "
             "or globs. (default: the bundle's training data)")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export the model for ONNX Runtime / OpenVINO (dynamic batch, height and width) and
    record each file as a variant with its parity against PyTorch (largest logit difference
    and pixel agreement, at two input sizes); then run it with --variant NAME."""
    from vitkit.workflows.segment_export import run_segment_export

    result = run_segment_export(bundle, variant or ["onnx-fp32"], data=data,
                                progress=not quiet)
    if json_out:
        print_json(result)
        return
    table = Table(title=f"{bundle}: exports vs torch-fp32 ({result['images']})")
    for col in ("variant", "sizes", "max abs diff", "pixels agree", "MB"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for entry in result["variants"]:
        parity = entry["parity"]
        sizes = ", ".join(f"{h}x{w}" for h, w in parity["sizes"])
        style = "" if parity["ok"] else "[bold red]"
        table.add_row(f"{style}{entry['name']}", sizes, f"{parity['max_abs_diff']:.2e}",
                      f"{parity['pixel_agreement']:.4f}", f"{entry['size_mb']:.1f}")
    stderr_console.print(table)
