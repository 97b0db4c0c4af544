"""`vitkit anomaly fit|score|eval`: anomaly detection from normal images only."""

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
    int_list,
    path_width,
    print_json,
    short_path,
)
from vitkit.console import stderr_console
from vitkit.errors import VitkitError

anomaly_app = typer.Typer(
    help="Anomaly detection learned from normal images only: fit, score, eval.",
    no_args_is_help=True,
)
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
    image_score: Annotated[str | None, typer.Option(
        help="PatchCore's image score from its patch scores: reweighted (the paper's), max, "
             "or top1 / top3 / top10 (mean of the top 1/3/10% of patches). (default: top3, "
             "chosen by measurement, see the README)")] = None,
    patch_size: Annotated[int | None, typer.Option(help="patchmean patch side in px.")] = None,
    resolution: Annotated[int | None, typer.Option(help="patchmean working long side in px. "
                                                   "(default: native, up to 1024)")] = None,
    auto: Annotated[bool | None, typer.Option(
        "--auto/--no-auto",
        help="Choose the input size (224 / 448 px) and, for PatchCore, the image statistics "
             "without labelled defects: each candidate is scored on synthetic defects made "
             "from your normal images; the cheapest one within one standard error of the "
             "best score is kept, every score recorded (in details.auto, the bundle and the "
             "eval report). About 12x the time of a plain fit. (default: off)")] = None,
    augment: Annotated[str | None, typer.Option(
        help="Also learn mirrored (flips: 4 copies) or mirrored and turned (dihedral: 8 "
             "copies) versions of each normal image: for a few images of parts and textures "
             "that look the same that way, not for objects with an up and down. (default: "
             "none)")] = None,
    folds: Annotated[int | None, typer.Option(
        min=0, help="The threshold comes from out-of-fold scores: every normal image is "
        "learned, and each of FOLDS parts is scored by a model fitted on the others. 0: hold "
        "out --holdout of the images instead (never learned). (default: 5)")] = None,
    holdout: Annotated[float | None, typer.Option(
        help="Hold out this share of the normal images (never learned) to set the threshold, "
             "instead of out-of-fold scores; implies --folds 0. (default with --folds 0: "
             "0.2)")] = None,
    percentile: Annotated[float | None, typer.Option(help="Threshold percentile of the "
                                                     "out-of-fold (or held-out) normal scores. "
                                                     "(default: 99)")] = None,
    out: Annotated[str | None, typer.Option(help="Bundle folder to write. "
                                            "(default: anomaly-model)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file with any fit option.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="(default: 16)")] = None,
    seed: Annotated[int | None, typer.Option(help="(default: 0)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Learn what normal looks like from good images and write an anomaly bundle.

    Every image is learned; the threshold is a high percentile of out-of-fold scores (each
    image scored by a model fitted without it), so it still comes from images the scoring
    model never saw. Unreadable images are skipped and listed in BUNDLE/skipped.csv.
    """
    from vitkit.anomaly.config import AnomalyFitConfig
    from vitkit.config import load_config
    from vitkit.workflows.anomaly import run_fit

    given = {"data": normal_dir, "method": method, "model": model, "weights": weights,
             "layers": int_list(layers, "--layers"), "image_size": image_size,
             "coreset_ratio": coreset_ratio, "global_stats": global_stats,
             "image_score": image_score, "patch_size": patch_size, "resolution": resolution,
             "auto": auto, "augment": augment, "folds": folds, "holdout": holdout,
             "percentile": percentile, "out": out, "batch_size": batch_size, "seed": seed,
             "device": device}
    cfg = load_config(AnomalyFitConfig, config, given)
    result = run_fit(cfg, progress=not quiet)
    if json_out:
        print_json(result.to_dict())
        return
    details = result.details
    bank = (f", memory bank {details['bank_before']} -> {details['bank_after']} patches"
            if "bank_after" in details else "")
    folds = (details.get("out_of_fold") or {}).get("folds")
    source = (f"out-of-fold scores ({folds} folds)" if folds
              else f"{result.n_holdout} held-out images")
    stderr_console.print(
        f"[bold green]done[/]: {result.method} learned {result.n_fit} normal images in "
        f"{result.fit_seconds:.1f} s{bank}; threshold {result.threshold:.4g} from "
        f"{source} ({result.n_skipped} skipped)\n"
        f"  bundle: {result.bundle}"
    )


@anomaly_app.command("score")
def anomaly_score(
    bundle: Annotated[Path, typer.Argument(help="Bundle written by `vitkit anomaly fit`.")],
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched "
                                               "recursively) or globs such as 'imgs/*.png'.")],
    maps: Annotated[Path | None, typer.Option("--maps", help="Write a heat-map overlay PNG per "
                                              "image into this folder.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    variant: Annotated[str | None, typer.Option(
        help="Run the feature extractor exported by `vitkit anomaly export` (openvino-bf16, "
             "openvino-fp32, onnx-fp32) or torch-fp32; scores are computed the same way. "
             "(default: the bundle's default, torch-fp32 unless an export made another)")
    ] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score images: 0..1 (0.5 = threshold) and normal/anomaly; unreadable files are reported.

    Exit code 0 when at least one image was scored (failures are counted on stderr); 2 when
    none could be."""
    from vitkit.anomaly.detector import AnomalyScore
    from vitkit.workflows.anomaly import run_score

    results = run_score(bundle, paths, maps_dir=maps, batch_size=batch_size, device=device,
                        progress=not quiet, variant=variant)
    if json_out:
        print_json([r.to_dict() for r in results])
    else:
        table = Table()
        for col in ("path", "label", "score"):
            table.add_column(col)
        width = path_width(30)
        for r in results:
            if isinstance(r, AnomalyScore):
                style = "bold red" if r.label == "anomaly" else "green"
                table.add_row(short_path(r.path, width), f"[{style}]{r.label}[/]",
                              f"{r.score:.3f}")
            else:
                table.add_row(short_path(r.path, width), f"[red]error[/]: {r.error}", "")
        stderr_console.print(table)
        if maps is not None:
            stderr_console.print(f"maps: {maps}")
    failures = [(r.path, r.error) for r in results if not isinstance(r, AnomalyScore)]
    finish_items("scored", len(results) - len(failures), failures)


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
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    variant: Annotated[str | None, typer.Option(
        help="Run the feature extractor exported by `vitkit anomaly export` (openvino-bf16, "
             "openvino-fp32, onnx-fp32) or torch-fp32; scores are computed the same way. "
             "(default: the bundle's default, torch-fp32 unless an export made another)")
    ] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Image AUROC/AP/F1, pixel AUROC and PRO (with masks), per defect type, and a report."""
    from vitkit.workflows.anomaly import run_eval

    if threshold not in ("stored", "f1"):
        raise VitkitError(f"--threshold must be 'stored' or 'f1', not {threshold!r}.")
    result = run_eval(bundle, data_root, out=out, threshold=threshold, batch_size=batch_size,
                      device=device, progress=not quiet, variant=variant)
    if json_out:
        print_json(result)
        return
    table = Table(title=f"{bundle} on {data_root}")
    for col in ("defect", "n", "AUROC", "AP", "F1"):
        table.add_column(col, justify="left" if col == "defect" else "right")
    for name, m in result["per_defect"].items():
        table.add_row(name, str(m["n"]), fmt(m["image_auroc"]), fmt(m["image_ap"]),
                      fmt(m["f1"]))
    stderr_console.print(table)
    extra = "".join(f"  {label} {fmt(result[key])}" for key, label in
                    (("pixel_auroc", "pixel AUROC"), ("pro", "PRO")) if key in result)
    stderr_console.print(f"image AUROC {fmt(result['image_auroc'])}  AP "
                         f"{fmt(result['image_ap'])}  F1 {fmt(result['f1'])}{extra}\n"
                         f"  report: {(out or bundle / 'eval') / 'report.html'}")


@anomaly_app.command("export")
def anomaly_export(
    bundle: Annotated[Path, typer.Argument(help="Bundle written by `vitkit anomaly fit` "
                                           "(patchcore or padim).")],
    variant: Annotated[list[str] | None, typer.Option(
        help="openvino-bf16 (fastest here), openvino-fp32 or onnx-fp32; repeat for several. "
             "(default: openvino-bf16)")] = None,
    data: Annotated[str | None, typer.Option(
        help="Images to check the exported scores on. (default: the bundle's normal images)")
    ] = None,
    default: Annotated[bool, typer.Option(
        "--default/--no-default", help="Make the (last) exported variant the one `anomaly "
        "score`, `eval` and `serve` use unless --variant says otherwise.")] = True,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export the feature extractor to OpenVINO / ONNX Runtime and record how closely its
    scores match PyTorch's; then score with `vitkit anomaly score BUNDLE … --variant NAME`.

    Only the backbone is exported: memory bank, Gaussians, thresholds and maps stay the
    bundle's own code, so the scores differ only by the extractor's arithmetic.
    """
    from vitkit.workflows.anomaly_export import run_anomaly_export

    result = run_anomaly_export(bundle, variant or ["openvino-bf16"], data=data,
                                make_default=default)
    if json_out:
        print_json(result)
        return
    table = Table(title=f"{bundle}: exported feature extractors vs torch-fp32")
    for col in ("variant", "images", "max score diff", "max map diff", "labels agree"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for entry in result["variants"]:
        parity = entry["parity"]
        table.add_row(entry["name"], str(parity["n_images"]), f"{parity['max_score_diff']:.4f}",
                      f"{parity['max_map_diff']:.4f}", f"{parity['label_agreement']:.3f}")
    stderr_console.print(table)
    if not quiet:
        stderr_console.print(f"scores are in 0..1 with 0.5 at the threshold; the bundle now "
                             f"scores with {result['default_variant']} (--variant NAME "
                             "chooses another)")
