"""`vitkit detect train|eval|predict|export`: object detection (labelled boxes)."""

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

detect_app = typer.Typer(
    help="Object detection: boxes with a class and a score. FCOS (default), RetinaNet or "
         "Faster R-CNN from torchvision on a timm backbone; train, eval, predict, export.",
    no_args_is_help=True,
)
app.add_typer(detect_app, name="detect")

_DATA_HELP = ("Annotated images: a COCO .json file (images at each file_name beside it or in "
              "images/), a YOLO folder (images/ + labels/ with 'class cx cy w h' lines, "
              "data.yaml naming the classes, optional train/val/test split folders), or an "
              "MVTec folder (one box per defect region of each mask).")
_DEVICE_HELP = "auto, cpu or cuda. (default: auto)"
_VARIANT_HELP = ("Runtime to detect with: torch-fp32, or one `vitkit detect export` made "
                 "(onnx-fp32, openvino-fp32). (default: the bundle's default, torch-fp32 "
                 "unless one was chosen)")


@detect_app.command("train")
def detect_train(
    data: Annotated[str, typer.Argument(help=_DATA_HELP)],
    out: Annotated[str | None, typer.Option(help="Run folder; the bundle goes to OUT/bundle. "
                                            "(default: runs/detect)")] = None,
    arch: Annotated[str | None, typer.Option(
        help="fcos (anchor-free, default), retinanet or fasterrcnn (two-stage, slowest).")
    ] = None,
    backbone: Annotated[str | None, typer.Option(
        help="timm CNN name; efficientnet_lite0/1/2 get ImageNet weights offline. "
             "(default: efficientnet_lite0)")] = None,
    weights: Annotated[str | None, typer.Option(
        help="Backbone weights: auto (offline registry, then hub), none (random) or a state "
             "dict file. (default: auto)")] = None,
    size: Annotated[int | None, typer.Option(
        help="Square input side in px, a multiple of 32; images are resized to it (aspect not "
             "kept). Small objects need a larger size. (default: 320)")] = None,
    head_epochs: Annotated[int | None, typer.Option(
        min=0, help="Epochs training FPN and heads on the frozen backbone. (default: 2)")] = None,
    full_epochs: Annotated[int | None, typer.Option(
        min=0, help="Epochs training every layer, the backbone at 0.1x the rate. "
                    "(default: 8)")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="(default: 8)")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW peak rate. (default: 0.001)")] = None,
    score_threshold: Annotated[float | None, typer.Option(
        help="Stored as predict's default cut-off. (default: 0.3)")] = None,
    val_fraction: Annotated[float | None, typer.Option(
        help="Share of the images held out for validation when the data has no val split. "
             "(default: 0.2)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with any training option; "
                                                "flags given here override it.")] = None,
    seed: Annotated[int | None, typer.Option(help="(default: 0)")] = None,
    device: Annotated[str | None, typer.Option(help=_DEVICE_HELP)] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last "
                                         "checkpoint.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a detector on annotated images and write a bundle.

    The images and boxes are checked first: unreadable images are listed in OUT/skipped.csv,
    boxes outside the image, without area or with an unknown class in OUT/dropped_boxes.csv.
    Without a val split, part of the images is held out (seeded). Training runs in two stages
    (FPN and heads on the frozen backbone, then everything); every epoch is checkpointed and
    --resume continues a killed run. The figure is mAP@0.5 on the validation images.
    """
    from vitkit.config import load_config
    from vitkit.workflows.detect import DetectTrainConfig, run_detect_train

    given = {"data": data, "out": out, "arch": arch, "backbone": backbone, "weights": weights,
             "size": size, "head_epochs": head_epochs, "full_epochs": full_epochs,
             "batch_size": batch_size, "lr": lr, "score_threshold": score_threshold,
             "val_fraction": val_fraction, "seed": seed, "device": device}
    cfg = load_config(DetectTrainConfig, config, given)
    changed = {k for k, v in given.items() if v is not None}
    result = run_detect_train(cfg, resume=resume, progress=not quiet, changed=changed)
    if json_out:
        print_json(result.to_dict())
        return
    test = f", test mAP@0.5 {fmt(result.test_map_50)}" if result.test_map_50 is not None else ""
    stderr_console.print(
        f"[bold green]done[/]: val mAP@0.5 {result.map_50:.3f}, mAP@0.5:0.95 "
        f"{result.map_50_95:.3f}{test} after {plural(result.epochs_run, 'epoch')} (best epoch "
        f"{result.best_epoch}; {result.train_images} train / {result.val_images} val images)\n"
        f"  bundle: {result.bundle}", highlight=False)


@detect_app.command("eval")
def detect_eval(
    bundle: Annotated[Path, typer.Argument(help="Bundle written by `vitkit detect train`.")],
    data: Annotated[str, typer.Argument(help=_DATA_HELP)],
    split: Annotated[str, typer.Option(
        help="auto: the data's test split if it has one, else the validation images of "
             "training when DATA is the training data, else all; or all, train, val, test.")
    ] = "auto",
    variant: Annotated[str | None, typer.Option(help=_VARIANT_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for eval.json (with PR curves) and "
                                             "report.html. (default: BUNDLE/eval)")] = None,
    report: Annotated[bool, typer.Option(
        "--report/--no-report", help="Write report.html (AP per class, PR curves, the images "
                                     "with the most missed and false boxes).")] = True,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 8,
    device: Annotated[str, typer.Option(help=_DEVICE_HELP)] = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """COCO mAP@0.5 and mAP@0.5:0.95, and AP per class, on annotated images, and an HTML
    report."""
    from vitkit.workflows.detect_infer import run_detect_eval

    record = run_detect_eval(bundle, data, split=split, variant=variant, out=out,
                             batch_size=batch_size, device=device, progress=not quiet,
                             report=report)
    report_file = Path(record["eval_file"]).parent / "report.html"
    if json_out:
        print_json(record)
        if report and not quiet:
            stderr_console.print(f"report: {report_file}", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"{bundle} on {data} ({record['split']}, {record['n_images']} images)")
    for col in ("class", "AP@0.5", "AP@0.5:0.95"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, ap in record["per_class"].items():
        table.add_row(name, fmt(ap["ap_50"]), fmt(ap["ap_50_95"]))
    stderr_console.print(table)
    stderr_console.print(f"mAP@0.5 {record['map_50']:.3f}  mAP@0.5:0.95 "
                         f"{record['map_50_95']:.3f}  ({record['skipped']} images skipped, "
                         f"{record['dropped_boxes']} boxes dropped)\n  {record['eval_file']}"
                         + (f"\n  report: {report_file}" if report else ""),
                         highlight=False)


@detect_app.command("predict")
def detect_predict(
    bundle: Annotated[Path, typer.Argument(help="Bundle written by `vitkit detect train`.")],
    images: Annotated[list[str], typer.Argument(help="Image files, folders (searched "
                                                "recursively) or globs such as 'imgs/*.png'.")],
    out: Annotated[Path | None, typer.Option(
        help="Folder for boxes.json and one <stem>_boxes.png overlay per image.")] = None,
    score_threshold: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Keep boxes scoring at least this. (default: the bundle's, "
                               "set at training)")] = None,
    variant: Annotated[str | None, typer.Option(help=_VARIANT_HELP)] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 8,
    device: Annotated[str, typer.Option(help=_DEVICE_HELP)] = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Boxes for images, in each image's own pixels: label, score and box (x1, y1, x2, y2).

    Exit code 0 when at least one image was processed (failures are counted on stderr); 2
    when none could be."""
    from vitkit.detect.predict import ImageDetections
    from vitkit.workflows.detect_infer import run_detect_predict

    results = run_detect_predict(bundle, images, out=out, score_threshold=score_threshold,
                                 variant=variant, batch_size=batch_size, device=device,
                                 progress=not quiet)
    if json_out:
        print_json([r.to_dict() for r in results])
    else:
        table = Table()
        for col in ("path", "boxes", "best"):
            table.add_column(col)
        width = path_width(40)
        for r in results:
            if isinstance(r, ImageDetections):
                best = (f"{r.boxes[0].label} {r.boxes[0].score:.2f}" if r.boxes else "none")
                table.add_row(short_path(r.path, width), str(len(r.boxes)), best)
            else:
                table.add_row(short_path(r.path, width), f"[red]error[/]: {r.error}", "")
        stderr_console.print(table)
        if out is not None:
            stderr_console.print(f"boxes and overlays: {out}", highlight=False)
    failures = [(r.path, r.error) for r in results if not isinstance(r, ImageDetections)]
    finish_items("processed", len(results) - len(failures), failures)


@detect_app.command("export")
def detect_export(
    bundle: Annotated[Path, typer.Argument(help="Bundle written by `vitkit detect train`.")],
    variant: Annotated[str, typer.Option(help="onnx-fp32: backbone, FPN and heads in ONNX "
                                         "(dynamic batch and size); openvino-fp32: the same "
                                         "graph as OpenVINO IR. Decoding and NMS stay "
                                         "Python.")] = "onnx-fp32",
    data: Annotated[str | None, typer.Option(
        help="Images to check parity on (annotated data or plain images). (default: the "
             "training data, else random images)")] = None,
    default: Annotated[bool, typer.Option(
        "--default/--no-default", help="Make the exported variant the one predict, eval and "
                                       "serve use unless --variant says otherwise.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export the detector to ONNX or OpenVINO and record how closely its boxes and scores
    match PyTorch's; then use it with --variant onnx-fp32 (or openvino-fp32)."""
    from vitkit.workflows.detect_export import run_detect_export

    result = run_detect_export(bundle, variant, data=data, make_default=default)
    if json_out:
        print_json(result)
        return
    parity = result["parity"]
    stderr_console.print(
        f"[bold green]exported[/] {result['variant']} to {bundle / result['file']}\n"
        f"  parity on {parity['images']}: outputs within {parity['max_output_diff']:.2e}, "
        f"boxes within {parity['max_box_diff']:.2e} px, scores within "
        f"{parity['max_score_diff']:.2e}; same detections on "
        f"{parity['same_detections']:.0%} of the images", highlight=False)
    if not quiet:
        stderr_console.print(f"  default variant: {result['default_variant']}",
                             highlight=False)
